
"""What a person sees: a search's log on a terminal, in a log file, and as JSON lines."""

import io
import json
import subprocess

import optuna
import pytest
from fleet import env, search_argv, write_fleet_study
from optuna.trial import TrialState, create_trial

from lenet_hpo.console import EpochBar, SearchLog, trial_line
from lenet_hpo.retrain import EpochDone
from lenet_hpo.search import Progress, SearchSummary, TrialEvent


def finished(number, value=0.9, state=TrialState.COMPLETE):
    dist = optuna.distributions.IntDistribution(4, 8)
    trial = create_trial(state=state, value=value if state == TrialState.COMPLETE else None, params={"c1": 5},
                         distributions={"c1": dist}, user_attrs={"epochs_trained": 0.125, "seconds_trained": 1.5},
                         intermediate_values={6250: 0.5})
    trial.number = number
    return trial


def progress(seconds, done):
    return Progress(finished=done, total=50, running=2, failed=0, best_value=0.99, seconds=seconds)


def test_in_a_log_file_no_bar_a_line_per_trial_and_a_status_every_30_s_at_most():
    out = io.StringIO()
    log = SearchLog("mnist", 50, stream=out, tty=False)
    log.on_event(TrialEvent("complete", finished(1, 0.987)))
    log.on_event(TrialEvent("pruned", finished(2, state=TrialState.PRUNED)))
    for t in range(0, 100, 1):  # a poll a second for 100 s
        log.on_progress(progress(float(t), t // 10))
    log.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("trial   1 COMPLETE val_acc 0.9870")
    assert "pruned after 0.125 epochs at 0.5000" in lines[1]
    status = [line for line in lines if line.startswith("status:")]
    assert len(status) == 3  # at 30, 60 and 90 s
    assert status[0] == "status: 3/50 finished, 2 running, 0 failed, best 0.9900, 0:30 elapsed, ETA 7:50"


def test_json_lines_one_object_per_event():
    out = io.StringIO()
    log = SearchLog("mnist", 50, stream=out, fmt="json", tty=True)  # JSON, even on a terminal
    log.on_event(TrialEvent("complete", finished(1, 0.987)))
    retry = finished(4, state=TrialState.WAITING)
    retry.system_attrs["failed_trial"] = 2
    log.on_event(TrialEvent("retried", retry))
    log.on_progress(progress(31.0, 3))
    summary = SearchSummary("mnist", "sqlite:///x.db", 50, 40, 10, 0, 0, 7, 0.993, {}, None, 0.984, 300.0, 2, 1)
    log.done(summary)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["complete", "retried", "status", "done"]
    assert events[0]["trial"] == 1 and events[0]["value"] == 0.987 and events[1]["retry_of"] == 2
    assert events[2]["eta_s"] == 486 and events[3]["best_value"] == 0.993


@pytest.mark.slow
def test_a_search_with_stderr_in_a_file_writes_lines_not_a_bar(tmp_path):
    study = write_fleet_study(tmp_path, "logged")
    url = f"sqlite:///{tmp_path / 'logged.db'}"
    with open(tmp_path / "search.log", "w") as log:
        argv = search_argv(study, url, 4, json=False)
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, env=env(), timeout=240)
    assert proc.returncode == 0
    text = (tmp_path / "search.log").read_text()
    assert "\r" not in text and sum(line.startswith("trial ") for line in text.splitlines()) == 4
    with open(tmp_path / "json.log", "w") as log:
        argv = [*search_argv(study, url, 6, json=False), "--log-format", "json"]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, env=env(), timeout=240)
    assert proc.returncode == 0
    events = [json.loads(line) for line in (tmp_path / "json.log").read_text().splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["complete", "complete", "done"] and events[-1]["n_complete"] == 6


def test_a_trial_line_says_where_a_pruned_trial_stopped():
    line = trial_line(finished(7, state=TrialState.PRUNED))
    assert line == "trial   7 PRUNED   pruned after 0.125 epochs at 0.5000 (0.125 ep, 2 s)"


def test_retrain_progress_in_a_log_is_run_lines_and_a_status_every_30_s_at_most():
    out, now = io.StringIO(), [0.0]
    bar = EpochBar("retrain", 40, stream=out, tty=False, clock=lambda: now[0])
    for epoch in range(1, 21):  # 20 epochs of 5 s, two runs at once
        now[0] = 5.0 * epoch
        bar.on_epoch_done(EpochDone("best", 0, epoch, 20, 5.0))
        bar.on_epoch_done(EpochDone("baseline", 0, epoch, 20, 5.0))
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        "retrain: 11/40 epochs, 0:30 elapsed, ETA 1:19",  # at the first epoch to end 30 s after the start
        "retrain: 23/40 epochs, 1:00 elapsed, ETA 0:44",
        "retrain: 35/40 epochs, 1:30 elapsed, ETA 0:12",
    ]


def test_retrain_progress_on_a_terminal_or_with_json_has_no_status_lines():
    for tty, enabled, status in ((True, True, False), (False, False, False), (False, True, True)):  # last: a log
        out, now = io.StringIO(), [0.0]
        bar = EpochBar("retrain", 4, stream=out, tty=tty, enabled=enabled, clock=lambda now=now: now[0])
        now[0] = 100.0  # well past the status interval
        bar.on_epoch_done(EpochDone("best", 0, 1, 2, 5.0))
        bar.close()
        assert ("retrain: 1/4 epochs, 1:40 elapsed" in out.getvalue()) == status, (tty, enabled)
