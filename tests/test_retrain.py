import json
import os
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from scipy import stats as st
from studyfiles import stored_study

from lenet_hpo.checkpoint import load_checkpoint
from lenet_hpo.cli import main
from lenet_hpo.config import BASELINE
from lenet_hpo.errors import StudyError
from lenet_hpo.retrain import Job, RetrainResult, _in_order, load_result, retrain_best
from lenet_hpo.search.studies import open_study, retrain_dir
from lenet_hpo.training import resolve_precision


def test_retrain_best_is_fair_and_complete(retrained):
    root, url, r = retrained
    study = optuna.load_study(study_name="s", storage=url)
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.values[0])
    assert r.trial == best.number
    assert r.models["best"].config["epochs"] == r.models["baseline"].config["epochs"] == 2
    assert r.models["baseline"].config == BASELINE.replace(epochs=2).to_dict()
    for role in ("best", "baseline"):
        block = r.models[role]
        assert block.seeds == [0, 1, 2] and len(block.test_accuracy) == 3
        assert block.mean == pytest.approx(sum(block.test_accuracy) / 3)
        sem = st.sem(block.test_accuracy)
        lo, hi = st.t.interval(0.95, 2, loc=block.mean, scale=sem) if sem > 0 else (block.mean, block.mean)
        assert block.ci95 == pytest.approx([max(lo, 0.0), min(hi, 1.0)])  # the t-interval of the three seeds
        for seed, path in zip(block.seeds, block.checkpoints, strict=True):
            ck = load_checkpoint(path)
            assert ck.config.seed == seed and ck.data["n_train"] + ck.data["n_val"] == 2000  # fitted on train + val
            last = ck.extra["history"][-1]
            assert last["split"] == "test" and last["eval_acc"] == pytest.approx(block.test_accuracy[seed])
    expected = resolve_precision("auto", BASELINE, torch.device("cpu"))  # the study's default precision
    assert r.models["best"].precision == r.models["baseline"].precision == expected
    d = r.difference
    assert d.test == "paired t-test" and 0 <= d.p_value <= 1 and d.verdict
    assert Path(r.results_csv).read_text().count("\n") == 7 and Path(r.results_csv).parent.name == "retrain"


def test_the_result_round_trips_through_its_json(retrained):
    root, _, r = retrained
    assert load_result(open_study("s", retrained[1]), root / "studies") == r
    assert RetrainResult.from_dict(json.loads(json.dumps(r.record()))) == r
    assert "test_set_differences" not in r.to_dict()  # --json prints the statistics, not 10,000 replicates


def test_rerun_skips_runs_already_done(retrained):
    root, url, first = retrained
    paths = [p for m in first.models.values() for p in m.checkpoints]
    before = {p: os.stat(p).st_mtime_ns for p in paths}
    again = retrain_best("s", url, seeds=3, epochs=2, device="cpu", workers=1, studies_dir=root / "studies",
                         early_stop=False)
    assert again.models["best"].test_accuracy == first.models["best"].test_accuracy
    assert all(source == "reused" for m in again.models.values() for source in m.sources)
    assert {p: os.stat(p).st_mtime_ns for p in paths} == before  # nothing written again


def test_top_k_rescoring_on_validation(searched, tmp_path):
    root, url, _ = searched
    r = retrain_best("s", url, seeds=2, epochs=1, top_k=2, device="cpu", workers=1, studies_dir=tmp_path)
    assert len(r.rescored) == 2 and r.trial in {row["trial"] for row in r.rescored}
    chosen = max(r.rescored, key=lambda row: row["rescored_mean"])
    assert r.trial == chosen["trial"] and len(chosen["rescored"]) == 2


def test_clear_errors(searched, tmp_path, capsys):
    root, url, path = searched
    with pytest.raises(StudyError, match=r"no study 'nope' .*studies there: s"):
        retrain_best("nope", url, seeds=2, device="cpu", studies_dir=tmp_path)
    empty_url = f"sqlite:///{tmp_path / 'e.db'}"
    study = optuna.create_study(study_name="e", storage=empty_url)
    study.set_user_attr("study_file", path.read_text())
    t = study.ask()
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(StudyError, match="no completed trial .*1 failed"):
        retrain_best("e", empty_url, seeds=2, device="cpu", studies_dir=tmp_path)
    assert main(["retrain-best", "--study", "s", "--storage", url, "--baselines", "nonesuch"]) == 2
    assert "unknown name 'nonesuch'" in capsys.readouterr().err
    assert main(["report", "--study", "../x", "--storage", url]) == 1
    assert "not allowed" in capsys.readouterr().err


def test_retrain_cli_json(searched, tmp_path, monkeypatch, capsys):
    root, url, _ = searched
    monkeypatch.chdir(tmp_path)
    argv = [
        "retrain-best", "--study", "s", "--storage", url, "--seeds", "2", "--epochs", "1", "--device", "cpu",
        "--workers", "1",
    ]
    assert main([*argv, "--precision", "fp32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for role in ("best", "baseline"):
        assert {"config", "test_accuracy", "mean", "std", "ci95"} <= set(out[role])
        assert out[role]["precision"] == "fp32"  # --precision wins over the study's auto
    assert {"ci95", "p_value", "test", "verdict"} <= set(out["difference"])
    d = out["difference"]  # with the test set's noise too, in fractions like the rest
    assert d["test_set_ci95"][0] <= d["difference"] <= d["test_set_ci95"][1] and 0 <= d["prob_improvement"] <= 1
    assert [m["seed"] for m in d["mcnemar"]] == [0, 1] and out["comparisons"]["baseline"] == d
    folder = Path(out["results_csv"]).parent
    assert (folder / "best-seed1.pt").exists() and (folder / "best-seed1.predictions.csv.gz").exists()


@pytest.mark.slow
def test_progress_moves_every_epoch_of_every_run(searched, tmp_path):
    root, url, _ = searched
    events, runs = [], []
    retrain_best("s", url, seeds=2, epochs=2, device="cpu", workers=2, studies_dir=tmp_path, use_cache=False,
                 on_epoch=events.append, on_run=runs.append)
    expected = [(role, seed, epoch) for role in ("baseline", "best") for seed in (0, 1) for epoch in (1, 2)]
    assert sorted((e.role, e.seed, e.epoch) for e in events) == expected
    assert all(e.epochs == 2 for e in events) and len(runs) == 4 and {r.source for r in runs} == {"trained"}


@pytest.mark.slow
def test_a_second_retraining_takes_the_baseline_from_the_run_cache(retrained, tmp_path, monkeypatch, capsys):
    root, url, first = retrained
    monkeypatch.chdir(tmp_path)
    runs = []
    again = retrain_best("s", url, seeds=3, epochs=2, device="cpu", workers=2, studies_dir=tmp_path / "other",
                         on_run=runs.append, early_stop=False)
    assert again.models["baseline"].sources == ["cached"] * 3 and again.models["best"].sources == ["trained"] * 3
    order = [(r.seed, r.source) for r in runs]
    for seed in range(3):  # a pair's cache look-up first: its line comes at once, not after the training
        assert order.index((seed, "cached")) < order.index((seed, "trained"))
    assert again.models["baseline"].test_accuracy == first.models["baseline"].test_accuracy
    assert all(p.startswith(str(tmp_path / "other")) for p in again.models["baseline"].checkpoints)  # copied in
    argv = ["retrain-best", "--study", "s", "--storage", url, "--seeds", "3", "--epochs", "2", "--device", "cpu",
            "--no-early-stop"]
    assert main([*argv, "--json"]) == 0  # in the working directory's studies/: the baseline from the cache again
    out = json.loads(capsys.readouterr().out)
    assert out["baseline"]["sources"] == ["cached"] * 3


def test_a_same_named_study_on_another_storage_never_reads_these_results(retrained, tmp_path):
    root, url, r = retrained
    other = stored_study(f"sqlite:///{tmp_path / 'other.db'}", "s")  # `search --study s --storage B`
    with pytest.raises(StudyError, match=r"no retrain results for study 's' in sqlite:///.*other.db"):
        load_result(other, root / "studies")
    here = open_study("s", url)
    assert retrain_dir(other, root / "studies") != retrain_dir(here, root / "studies")
    copied = retrain_dir(other, root / "studies")  # results copied by hand into the other study's folder
    copied.mkdir(parents=True)
    shutil.copy(Path(r.results_csv).parent / "summary.json", copied / "summary.json")
    try:
        with pytest.raises(StudyError, match="came from another study .*storage 'sqlite:///"):
            load_result(other, root / "studies")
    finally:
        shutil.rmtree(copied.parent)
    assert r.source == here.identity


def test_runs_start_slowest_first_within_the_first_three_pairs(synthetic, tmp_path):
    # With a run 3x slower than its partner, two workers finish 3 pairs in 2 slow runs' time
    # only when the slow runs of pairs 0-2 start before the fast ones.
    slow, fast = BASELINE.replace(c1=16, c3=48), BASELINE
    jobs = [Job(role, cfg.replace(seed=s), tmp_path, "cpu", "fp32", {}, cached=role == "baseline")
            for s in range(5) for role, cfg in (("best", slow), ("baseline", fast))]
    order = [(j.role, j.config.seed) for j in _in_order(jobs, synthetic)]
    assert order == [("best", 0), ("best", 1), ("best", 2), ("baseline", 0), ("baseline", 1), ("baseline", 2),
                     ("best", 3), ("baseline", 3), ("best", 4), ("baseline", 4)]
    (tmp_path / "baseline-seed1.pt").write_bytes(b"")  # a run already there comes first: its line at once
    order = [(j.role, j.config.seed) for j in _in_order(jobs, synthetic)]
    assert order[:4] == [("baseline", 1), ("best", 0), ("best", 1), ("best", 2)]
