"""A stored study: opening it, its record and spec, its best trials, what the budget curve reads."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from studyfiles import stored_study

from lenet_hpo.errors import StudyError
from lenet_hpo.search.storage import open_storage
from lenet_hpo.search.studies import (
    BASELINE_ROLE,
    ROLE,
    StoredStudy,
    best_trials,
    count_states,
    is_baseline,
    open_study,
    retrain_dir,
    search_values,
    study_record,
    write_record,
)

DIST = {"lr": FloatDistribution(1e-4, 1.0, log=True)}


def trial(value, state=TrialState.COMPLETE, *, baseline=False, reports=None):
    return create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params={"lr": 0.01},
        distributions=DIST, user_attrs={ROLE: BASELINE_ROLE} if baseline else {},
        intermediate_values=reports or {},
    )


@pytest.fixture
def study(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    s = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for t in (trial(0.97, baseline=True), trial(0.95), trial(None, TrialState.PRUNED, reports={100: 0.5}),
              trial(0.99), trial(0.99), trial(None, TrialState.FAIL)):
        s.add_trial(t)
    return s, url


def test_best_trials_leave_out_the_baseline_and_break_ties_by_the_earlier_trial(study):
    s, _ = study
    assert [t.number for t in best_trials(s, k=3)] == [3, 4, 1]
    assert is_baseline(s.trials[0]) and not any(is_baseline(t) for t in s.trials[1:])


def test_a_study_whose_only_completed_trial_is_the_baseline_has_no_best(tmp_path):
    s = optuna.create_study(study_name="b", storage=f"sqlite:///{tmp_path / 'b.db'}", direction="maximize")
    s.add_trial(trial(0.97, baseline=True))
    s.add_trial(trial(None, TrialState.PRUNED, reports={10: 0.3}))
    with pytest.raises(StudyError, match=r"no completed trial \(1 pruned, 0 failed, 0 running\)"):
        best_trials(s)


def test_count_states_and_search_values(study):
    s, _ = study
    counts = count_states(s)
    assert (counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL]) == (4, 1, 1)
    rows, baseline = search_values(s)
    assert baseline == 0.97  # the reference, not a draw
    assert rows == [(1, 0.95, False), (2, 0.5, True), (3, 0.99, False), (4, 0.99, False)]  # pruned: its last report


def test_open_study_names_the_studies_that_exist_and_reads_the_record(study):
    _, url = study
    with pytest.raises(StudyError, match=r"no study 'nope' in sqlite:///.*\(studies there: s\)"):
        open_study("nope", url)
    stored = open_study("s", url)
    assert stored.record == {}
    with pytest.raises(StudyError, match="was not created by lenet-hpo"):
        stored.spec()
    storage = open_storage(url, heartbeat=None)
    write_record(storage, "s", "study_file", '[study]\ndataset = "synthetic"\nepochs = 2\n')
    assert study_record(storage, "s") == {"study_file": '[study]\ndataset = "synthetic"\nepochs = 2\n'}
    spec = StoredStudy(stored.study, study_record(storage, "s")).spec()
    assert (spec.name, spec.dataset, spec.epochs) == ("s", "synthetic", 2)


def test_outputs_are_keyed_by_the_exact_study_and_other_studies_outputs_are_refused(tmp_path, monkeypatch):
    a = stored_study(f"sqlite:///{tmp_path / 'a.db'}", "s")
    b = stored_study(f"sqlite:///{tmp_path / 'b.db'}", "s")  # the same name on another storage
    monkeypatch.chdir(tmp_path)
    again = open_study("s", "sqlite:///a.db")  # the same file, written otherwise
    assert retrain_dir(a, tmp_path) == tmp_path / "s" / a.key / "retrain"
    assert a.key != b.key and again.key == a.key and again.identity == a.identity
    a.check_outputs(a.identity, tmp_path / "summary.json")
    with pytest.raises(StudyError, match=r"came from another study \(storage 'sqlite:///.*/a.db' there, 'sqlite:///"):
        b.check_outputs(a.identity, tmp_path / "summary.json")
    with pytest.raises(StudyError, match="does not say which study it came from"):
        b.check_outputs(None, tmp_path / "summary.json")
