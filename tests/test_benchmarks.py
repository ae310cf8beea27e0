"""The search benchmark end to end on synthetic studies: what it prints is what the studies hold."""

import importlib
import re
import sys
from pathlib import Path

import optuna
import pytest
from studyfiles import C1_LR, FAST_FIXED, SYNTHETIC, write_study

from benchmarks import search_wall_time as B
from lenet_hpo.config import BASELINE
from lenet_hpo.search.space import params_for
from lenet_hpo.search.studyfile import load_spec

RUN = re.compile(
    r"^(\w+) run (\d) \(sampler seed (?P<seed>\d+|as in the file)\): \d+ s,"
    r" ([\d.]+) epochs, (\d+)/(\d+)/(\d+) complete/pruned/failed,"
    r" best ([\d.]+|nan) \(trial (\d+|None)\)"
)


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")))
def test_every_benchmark_imports_against_the_current_package(name):
    importlib.import_module(f"benchmarks.{name}")  # a renamed or moved name fails here, not in a user's run


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "benchmarks" / "studies").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_benchmark_study_loads_with_the_baseline_in_its_space(path):
    # the baseline is each study's first bar: outside the space it would not be enqueued
    assert params_for(BASELINE, load_spec(str(path))) is not None


@pytest.mark.slow
def test_side_by_side_reports_each_run_and_the_ratio(tmp_path, monkeypatch, capsys):
    a = write_study(tmp_path, "a", study=SYNTHETIC, fixed=FAST_FIXED, space=C1_LR)
    # b stops every trial after its first epoch: half the epochs of a, and no best trial
    b = write_study(tmp_path, "b", study=SYNTHETIC, fixed=FAST_FIXED, space=C1_LR,
                    pruner={"name": "threshold", "lower": 0.999, "n_warmup_steps": 1})
    keep = tmp_path / "dbs"
    argv = ["search_wall_time.py", str(a), str(b), "--trials", "2", "--repeats", "2", "--workers", "1",
            "--threads", "1", "--device", "cpu", "--precision", "fp32", "--sampler-seed", "3,4", "--keep", str(keep)]
    monkeypatch.setattr(sys, "argv", argv)
    B.main()
    out = capsys.readouterr().out
    runs = [m for line in out.splitlines() if (m := RUN.match(line))]
    assert [(m[1], m[2]) for m in runs] == [("a", "1"), ("b", "1"), ("a", "2"), ("b", "2")]  # in turns
    assert [m["seed"] for m in runs] == ["3", "3", "4", "4"]  # each seed runs every study
    for m in runs:
        url = f"sqlite:///{keep / f'{m[1]}-{int(m[2]) - 1}.db'}"
        study = optuna.load_study(study_name=m[1], storage=url)
        trials = study.get_trials(deepcopy=False)
        assert float(m[4]) == pytest.approx(sum(t.user_attrs["epochs_trained"] for t in trials), abs=0.005)
        states = [t.state for t in trials]
        assert (int(m[5]), int(m[6]), int(m[7])) == (
            states.count(optuna.trial.TrialState.COMPLETE), states.count(optuna.trial.TrialState.PRUNED), 0)
        if m[1] == "a":
            assert float(m[8]) == pytest.approx(study.best_value, abs=5e-5) and int(m[9]) == study.best_trial.number
        else:
            assert (m[8], m[9]) == ("nan", "None")
        assert {t.user_attrs["precision"] for t in trials} == {"fp32"}
    epochs = {m[1]: float(m[4]) for m in runs}
    assert epochs == {"a": 4.0, "b": 2.0}  # 2 trials x 2 epochs, and x 1
    assert "| a |" in out and "| b |" in out
    assert re.search(r"^a / b: wall time [\d.]+x, epochs 2\.00x$", out, re.MULTILINE)


@pytest.mark.realdata
@pytest.mark.slow
def test_time_to_verdict_runs_the_users_commands_in_turns(mnist_dir, tmp_path, monkeypatch, capsys):
    """Two configurations of the smoke study (early stop against the fixed design), in turns, each
    from an empty run cache; what it prints is what each run's summary.json holds."""
    import json

    from benchmarks import time_to_verdict as T

    root = str(Path(__file__).parents[1])
    argv = ["time_to_verdict.py", "--a", root, "--a-study", "smoke", "--a-retrain", "--seeds 3 --epochs 1",
            "--b", root, "--b-study", "smoke", "--b-retrain", "--seeds 3 --epochs 1 --no-early-stop",
            "--order", "a,b", "--trials", "3", "--precision", "fp32", "--data-dir", str(mnist_dir),
            "--seeds", "3", "--keep", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    T.main()
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if re.match(r"^[ab] run 1 \(sampler seed [^)]*\): search \d+ s", line)]
    assert [line[0] for line in lines] == ["a", "b"] and all("(sampler seed 3)" in line for line in lines)
    assert "total_s: " in out and "ratios a / b" in out
    summaries = {w.name.split("-")[1][0]: json.loads(next(w.glob("studies/smoke/*/retrain/summary.json")).read_text())
                 for w in tmp_path.glob("verdict-*")}
    for s in summaries.values():  # each run began from an empty run cache: its baselines were trained
        assert set(s["baseline"]["sources"]) == {"trained"}
    b = summaries["b"]
    assert b["stopping"]["early_stop"] is False and b["n_seeds"] == 3 and "fixed design" in lines[1]
    assert f"p = {b['difference']['p_value']:.2g}" in lines[1]


def test_pruner_replay_stops_what_a_stricter_setting_would_and_counts_its_epochs():
    from datetime import datetime, timedelta

    from benchmarks import pruner_replay as R
    from lenet_hpo.search.pruning import NoisePruner

    t0, epoch = datetime(2026, 1, 1), 1000
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def trial(number, curve, state=optuna.trial.TrialState.COMPLETE):
        steps = {epoch // 2 * (k + 1): v for k, v in enumerate(curve)}
        return optuna.trial.create_trial(
            state=state, value=curve[-1] if state == optuna.trial.TrialState.COMPLETE else None, params={"x": 0.5},
            distributions=dist, intermediate_values=steps, user_attrs={"n": number},
        ), t0 + timedelta(seconds=10 * number)

    trials = []
    for number, curve in enumerate([(0.990, 0.992), (0.980, 0.991), (0.989, 0.993)]):
        t, start = trial(number, curve)
        t.number, t.datetime_start, t.datetime_complete = number, start, start + timedelta(seconds=5)
        trials.append(t)
    # trial 1 is 1 point behind trial 0 at half an epoch: 3.7 standard errors of a 5,000-image check
    lenient = R.replay(trials, NoisePruner(0.0, images=5000, z=5.0, n_startup_trials=1), epoch)
    strict = R.replay(trials, NoisePruner(0.0, images=5000, z=1.5, n_startup_trials=1), epoch)
    assert lenient["epochs"] == 3.0 and [n for n, _ in lenient["kept"]] == [0, 1, 2]
    assert strict["epochs"] == 2.5 and [n for n, _ in strict["kept"]] == [0, 2] and strict["best"] == (2, 0.993)
    assert strict["stops"] == ["trial 1 at 0.5 epochs: 0.9800 (it ended at 0.9910)"]
