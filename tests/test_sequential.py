"""The group-sequential verdict: its error rate between equal models, and retrain-best stopping on it."""

import io

import numpy as np
import pytest
from scipy import stats as st

from lenet_hpo import console, retrain
from lenet_hpo.cli import main
from lenet_hpo.final import FinalRun
from lenet_hpo.retrain import retrain_best
from lenet_hpo.sequential import ALPHA, levels, look, paired_p


def test_the_looks_spend_alpha_and_little_early():
    spend = levels(5)
    assert list(spend) == [2, 3, 4, 5] and sum(spend.values()) == pytest.approx(ALPHA)
    assert spend[2] < 0.002 < spend[3] < spend[4] < spend[5]  # O'Brien-Fleming type: the early looks get little


def test_between_equal_models_it_declares_a_difference_at_most_at_the_nominal_rate():
    """Two equal models: per-seed differences are noise around 0.  Simulated, the rule declares a
    difference in under 5% of comparisons; stopping at the first p < 0.05 would in about 13%."""
    rng = np.random.default_rng(0)
    d = rng.normal(0.0, 0.001, (40_000, 5))
    spend = levels(5)
    sequential, naive = np.zeros(len(d), bool), np.zeros(len(d), bool)
    for n in spend:
        p = st.ttest_1samp(d[:, :n], 0.0, axis=1).pvalue
        sequential |= p < spend[n]
        naive |= p < ALPHA
    assert 0.02 < sequential.mean() <= ALPHA + 0.005  # it spends its rate, and no more
    assert naive.mean() > 0.1  # what the rule is for
    for row in d[:200]:  # the library's look agrees with the vectorised one
        assert look(list(row[:3]), 5).settled == (st.ttest_1samp(row[:3], 0.0).pvalue < spend[3])


def test_a_look_says_where_it_stands():
    x = look([0.0048, 0.0050, 0.0049], 5)
    assert x.settled and x.pairs == 3 and x.p_value == pytest.approx(paired_p([0.0048, 0.0050, 0.0049]))
    assert x.sentence() == "after 3 of at most 5 seed pairs: +0.49 points, p < 0.001 (settles below 0.0095): settled"
    assert not look([0.0048, 0.0050], 5).settled  # two pairs: p about 0.01, and the first look may spend 0.002


TUNED = [0.9900, 0.9903, 0.9901, 0.9904, 0.9902]
BASE = [0.9850, 0.9852, 0.9851, 0.9851, 0.9850]


@pytest.fixture
def fake_runs(monkeypatch):
    """retrain-best with its trainings replaced by fixed accuracies; the jobs it ran, in order."""
    ran = []

    def run_job(job, data, on_epoch=None):
        ran.append((job.role, job.config.seed))
        acc = (TUNED if job.role == "best" else BASE)[job.config.seed]
        return FinalRun(job.role, job.config.seed, acc, 0.1, job.config.epochs, 1.0, 1.0, 10, 10,
                        str(job.path), "completed")

    monkeypatch.setattr(retrain, "run_job", run_job)
    return ran


def test_a_settled_comparison_stops_early_and_says_why(searched, tmp_path, fake_runs, capfd, monkeypatch):
    root, url, _ = searched
    looks = []
    r = retrain_best("s", url, seeds=5, epochs=1, device="cpu", workers=1, studies_dir=tmp_path, on_look=looks.append)
    assert [x.pairs for x in looks] == [2, 3] and looks[-1].settled and not looks[0].settled
    assert r.n_seeds == 3 and r.models["best"].seeds == [0, 1, 2] and len(fake_runs) == 6  # pairs 4 and 5 never ran
    assert r.stopping.reason().startswith("settled after 3 of at most 5 seed pairs: p ")
    assert r.to_dict()["stopping"]["pairs"] == 3 and r.difference.p_value < 0.01
    monkeypatch.chdir(tmp_path)
    argv = ["retrain-best", "--study", "s", "--storage", url, "--epochs", "1", "--device", "cpu", "--workers", "1"]
    assert main(argv) == 0
    assert "seeds: settled after 3 of at most 5 seed pairs" in capfd.readouterr().out
    shown = io.StringIO()  # the console's line after each pair, as retrain-best prints it
    bar = console.EpochBar("retrain", 50, stream=shown, tty=False)
    for x in looks:
        bar.on_look(x)
    assert shown.getvalue().splitlines()[0].startswith("verdict after 2 of at most 5 seed pairs: +0.50 points")
    assert shown.getvalue().splitlines()[0].endswith("going on") and bar.total == bar.done  # settled: no more epochs


def test_no_early_stop_trains_every_seed_pair(searched, tmp_path, fake_runs):
    root, url, _ = searched
    r = retrain_best("s", url, seeds=5, epochs=1, device="cpu", workers=1, studies_dir=tmp_path, early_stop=False)
    assert r.n_seeds == 5 and len(fake_runs) == 10 and sorted({s for _, s in fake_runs}) == [0, 1, 2, 3, 4]
    assert [x.pairs for x in r.stopping.looks] == [2, 3, 4, 5]  # the verdict so far, shown after every pair
    assert r.stopping.reason() == "fixed design: all 5 seed pairs (--no-early-stop)"
    seeds = [s for _, s in fake_runs]  # the first three pairs as one group (slowest first: test_retrain), then by pair
    assert sorted(seeds[:6]) == [0, 0, 1, 1, 2, 2] and seeds[6:] == [3, 3, 4, 4]


def test_unsettled_runs_to_the_most_pairs(searched, tmp_path, fake_runs, monkeypatch):
    monkeypatch.setattr(retrain, "run_job", lambda job, data, on_epoch=None: FinalRun(
        job.role, job.config.seed, 0.99 + 0.001 * ((job.config.seed + (job.role == "best")) % 2), 0.1, 1, 1.0, 1.0,
        10, 10, str(job.path), "completed"))
    root, url, _ = searched
    r = retrain_best("s", url, seeds=4, epochs=1, device="cpu", workers=1, studies_dir=tmp_path)
    assert r.n_seeds == 4 and not r.stopping.settled
    assert r.stopping.reason().startswith("not settled after all 4 seed pairs")


@pytest.mark.slow
def test_in_worker_processes_the_runs_stop_with_the_verdict(searched, tmp_path):
    """Real trainings in two processes: whatever the looks say, the result holds exactly the
    pairs up to the last look, and its runs are those seeds."""
    root, url, _ = searched
    r = retrain_best("s", url, seeds=4, epochs=1, device="cpu", workers=2, studies_dir=tmp_path, use_cache=False)
    assert r.n_seeds == r.stopping.pairs and r.models["best"].seeds == list(range(r.n_seeds))
    assert r.models["baseline"].seeds == list(range(r.n_seeds))
