import json
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState
from studyfiles import C1_LR, FAST_FIXED, SYNTHETIC, write_study

from lenet_hpo.cli import main
from lenet_hpo.config import TrialConfig
from lenet_hpo.data import split_digest
from lenet_hpo.errors import StudyError
from lenet_hpo.search import WarmStart, run_search
from lenet_hpo.search.studies import study_record
from lenet_hpo.search.studyfile import load_spec
from lenet_hpo.search.worker import fail_orphans
from lenet_hpo.training import Probe, resolve_precision, train


@pytest.fixture
def study_file(tmp_path, monkeypatch):
    """A fast synthetic study; the working directory is a temp dir (default storage goes there)."""
    monkeypatch.chdir(tmp_path)

    def make(name="t", pruner="none", **pruner_opts):
        return write_study(
            tmp_path,
            name,
            study=SYNTHETIC,
            sampler={"name": "tpe", "seed": 0, "n_startup_trials": 3},
            pruner={"name": pruner, **pruner_opts},
            fixed=FAST_FIXED,
            space=C1_LR,
        )

    return make


def finished(study):
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_search_completes_and_records_attrs(study_file, tmp_path, storage_url):
    spec = load_spec(str(study_file()))
    url = storage_url
    summary = run_search(spec, url, 3, workers=1, threads=1, device="cpu")
    assert summary.n_complete == 3 and summary.n_failed == 0 and summary.best_value > 0.5
    study = optuna.load_study(study_name="t", storage=url)
    t = study.best_trial
    assert {"params", "macs", "seconds_per_epoch", "history", "seed", "device", "config"} <= set(t.user_attrs)
    assert len(t.user_attrs["history"]) == 2 and t.user_attrs["device"] == "cpu"
    assert t.user_attrs["precision"] == resolve_precision(
        "auto", spec.base_config(), torch.device("cpu")
    )  # the default
    attrs = study_record(optuna.storages.RDBStorage(url), "t")  # in full; the user attributes stay short
    assert attrs["data"]["n_val"] == 400 and attrs["data"]["split_seed"] == 0 and attrs["data"]["checksum"]
    assert attrs["study_file"] == spec.text and "torch" in attrs["versions"]


def test_baseline_is_enqueued_first_when_in_the_space_and_never_pruned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a pruner that stops every trial after its first epoch, except the reference
    path = write_study(
        tmp_path, "b", study=SYNTHETIC, pruner={"name": "threshold", "lower": 0.999}, space={"c1": C1_LR["c1"]}
    )
    summary = run_search(load_spec(str(path)), f"sqlite:///{tmp_path / 'b.db'}", 2, workers=1, threads=1, device="cpu")
    first, second = optuna.load_study(study_name="b", storage=f"sqlite:///{tmp_path / 'b.db'}").trials
    assert first.user_attrs["role"] == "baseline" and first.params == {"c1": 6}
    assert first.state == TrialState.COMPLETE and len(first.user_attrs["history"]) == 2
    assert first.intermediate_values.keys() == {1600, 3200}  # reported like any trial: steps are images seen
    assert second.state == TrialState.PRUNED and len(second.user_attrs["history"]) == 1
    assert summary.baseline_value == first.value


def test_rerun_resumes_to_exactly_the_total(study_file, tmp_path, storage_url):
    spec = load_spec(str(study_file()))
    url = storage_url
    run_search(spec, url, 2, workers=1, threads=1, device="cpu")
    summary = run_search(spec, url, 5, workers=1, threads=1, device="cpu")
    assert summary.n_complete + summary.n_pruned == 5
    again = run_search(spec, url, 5, workers=1, threads=1, device="cpu")
    study = optuna.load_study(study_name="t", storage=url)
    assert len(finished(study)) == 5 and again.n_complete == summary.n_complete


def test_rerun_after_editing_comments_resumes_but_changed_settings_are_refused(study_file, tmp_path, storage_url):
    path = study_file()
    url = storage_url
    run_search(load_spec(str(path)), url, 2, workers=1, threads=1, device="cpu")
    path.write_text("# a comment added after the study began\n" + path.read_text())
    summary = run_search(load_spec(str(path)), url, 3, workers=1, threads=1, device="cpu")
    assert summary.n_complete + summary.n_pruned == 3
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 3"))
    with pytest.raises(StudyError, match="different version.*another name"):
        run_search(load_spec(str(path)), url, 4, workers=1, threads=1, device="cpu")
    assert len(optuna.load_study(study_name="t", storage=url).trials) == 3  # nothing written


def test_forced_prune_and_divergence_are_pruned_with_a_reason(study_file, tmp_path, storage_url):
    spec = load_spec(str(study_file(pruner="threshold", lower=0.999)))
    url = storage_url
    summary = run_search(spec, url, 2, workers=1, threads=1, device="cpu")
    assert summary.n_pruned == 2 and summary.best_number is None
    study = optuna.load_study(study_name="t", storage=url)
    assert all(len(t.user_attrs["history"]) == 1 for t in study.trials)  # stopped after epoch 1

    # fp32: the same rate in bf16 ends at chance with a large but finite loss instead
    nan = write_study(
        tmp_path,
        "nan",
        study={**SYNTHETIC, "epochs": 20, "precision": "fp32"},
        pruner={"name": "none"},
        fixed={"activation": "relu", "momentum": 0.99},
        space={"lr": {"low": 10.0, "high": 10.0}},
    )
    summary = run_search(load_spec(str(nan)), f"sqlite:///{tmp_path / 'nan.db'}", 2, workers=1, threads=1, device="cpu")
    assert summary.n_pruned == 2
    trials = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path / 'nan.db'}").trials
    assert all(t.user_attrs["outcome"] == "diverged" and "NaN" in t.user_attrs["fail_reason"] for t in trials)


@pytest.mark.slow
def test_two_workers_exactly_n_unique_none_running(study_file, tmp_path, storage_url):
    spec = load_spec(str(study_file()))
    url = storage_url
    summary = run_search(spec, url, 8, workers=2, threads=1, device="cpu")
    study = optuna.load_study(study_name="t", storage=url)
    trials = study.get_trials()
    assert summary.workers == 2
    assert len(finished(study)) == 8
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert summary.n_failed == 0


def test_bad_study_names_fail_before_any_database_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("../evil", "nope"):
        assert main(["search", "--study", name]) == 1
        assert "error:" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.db"))


def test_cli_json_and_optuna_cli_lists_our_trials(study_file, tmp_path, capsys):
    path = study_file()
    url = f"sqlite:///{tmp_path / 't.db'}"
    assert (
        main(
            [
                "search", "--study", str(path), "--trials", "3", "--workers", "1", "--threads", "1", "--device",
                "cpu", "--json", "--storage", url,
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert {"study", "storage", "best_value", "best_params", "n_complete", "n_pruned", "n_failed", "seconds"} <= set(
        out
    )
    assert out["n_complete"] == 3 and out["study"] == "t"
    optuna_cli = [sys.executable, "-c", "from optuna.cli import main; main()"]
    proc = subprocess.run(
        [*optuna_cli, "trials", "--study-name", "t", "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(proc.stdout)
    assert sorted(r["number"] for r in rows) == [0, 1, 2] and all(r["state"] == "COMPLETE" for r in rows)


@pytest.mark.slow
def test_parallel_workers_give_the_same_trials_as_one_at_a_time(study_file, tmp_path):
    """The same configs and seeds give the same metrics whether trials run one at a
    time or in parallel worker processes."""
    spec = load_spec(str(study_file()))
    configs = [{"c1": c1, "lr": lr} for c1, lr in [(4, 0.002), (6, 0.005), (8, 0.009), (5, 0.001)]]
    results = {}
    for workers in (1, 2):
        url = f"sqlite:///{tmp_path / f'w{workers}.db'}"
        study = optuna.create_study(study_name="t", storage=url, direction="maximize")
        study.set_user_attr("study_file", spec.text)
        for params in configs:
            study.enqueue_trial(params)
        run_search(spec, url, 4, workers=workers, threads=1, device="cpu")
        trials = optuna.load_study(study_name="t", storage=url).get_trials()
        results[workers] = sorted(
            (tuple(sorted(t.params.items())), t.value, t.user_attrs["history"][-1]["eval_loss"]) for t in trials
        )
    for (p1, v1, l1), (p2, v2, l2) in zip(results[1], results[2], strict=True):
        assert p1 == p2
        assert v1 == pytest.approx(v2, abs=1e-6) and l1 == pytest.approx(l2, rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_trial_computes_in_the_study_precision_as_train_would(precision, study_file, tmp_path):
    path = study_file()
    path.write_text(path.read_text().replace("epochs = 2", f'epochs = 2\nprecision = "{precision}"'))
    spec = load_spec(str(path))
    url = f"sqlite:///{tmp_path / 't.db'}"
    run_search(spec, url, 1, workers=1, threads=1, device="cpu")
    (t,) = optuna.load_study(study_name="t", storage=url).trials
    assert t.user_attrs["precision"] == precision
    alone = train(TrialConfig.from_dict(t.user_attrs["config"]), spec.load_data(), device="cpu", precision=precision)
    assert t.value == alone.history[-1].eval_acc
    assert t.user_attrs["history"][-1]["eval_loss"] == alone.history[-1].eval_loss


# --- sub-epoch fidelity ------------------------------------------------------------------------


def test_reports_inside_epochs_reach_the_pruner_at_their_steps(tmp_path, monkeypatch):
    """Steps are images seen (1,600 an epoch here): reports at 1/4 and 1/2 epoch, then per
    epoch, and successive halving's rungs at 1/4, 1/2 and 1 epoch act there."""
    monkeypatch.chdir(tmp_path)
    path = write_study(
        tmp_path, "f", study={**SYNTHETIC, "report_at": [0.25], "val_subset": 100},
        sampler={"name": "random", "seed": 0},
        pruner={"name": "successive_halving", "min_resource": 0.25, "reduction_factor": 2},
        fixed=FAST_FIXED, space=C1_LR,
    )
    spec = load_spec(str(path))
    assert spec.report_points() == (0.25, 0.5)  # 0.5: a rung, reported though not asked for
    url = f"sqlite:///{tmp_path / 'f.db'}"
    run_search(spec, url, 8, workers=1, threads=1, device="cpu")
    trials = optuna.load_study(study_name="f", storage=url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(set(t.intermediate_values) == {400, 800, 1600, 3200} for t in complete)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.last_step in (400, 800, 1600) for t in pruned)
    assert any(t.last_step < 1600 for t in pruned)  # stopped inside the first epoch
    for t in pruned:
        assert t.user_attrs["epochs_trained"] == t.last_step / 1600
        rungs = [k for k in t.system_attrs if k.startswith("completed_rung_")]
        assert len(rungs) == {400: 1, 800: 2, 1600: 3}[t.last_step]  # each rung judged where it falls


def test_a_trial_that_trained_its_whole_budget_completes_where_a_rung_falls_at_the_end(tmp_path, monkeypatch):
    """Rungs at 1/2, 1 and 2 epochs, 2 the whole budget: the last one judges nobody (with seed 2,
    successive halving would prune a trial there)."""
    monkeypatch.chdir(tmp_path)
    path = write_study(
        tmp_path, "e", study=SYNTHETIC, sampler={"name": "random", "seed": 2},
        pruner={"name": "successive_halving", "min_resource": 0.5, "reduction_factor": 2},
        fixed=FAST_FIXED, space=C1_LR,
    )
    url = f"sqlite:///{tmp_path / 'e.db'}"
    run_search(load_spec(str(path)), url, 10, workers=1, threads=1, device="cpu")
    trials = optuna.load_study(study_name="e", storage=url).trials
    assert [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.state == TrialState.COMPLETE for t in trials if t.user_attrs["epochs_trained"] == 2)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2


@pytest.mark.parametrize("subset_epochs", [False, True])
def test_points_inside_epochs_validate_on_the_subset_and_the_value_on_the_whole_split(
    tmp_path, monkeypatch, subset_epochs
):
    """With val_subset_epochs, the end of epoch 1 (of 2) validates on the subset too."""
    monkeypatch.chdir(tmp_path)
    path = write_study(
        tmp_path, "v", study={**SYNTHETIC, "report_at": [0.5, 1.5], "val_subset": 100,
                              "val_subset_epochs": subset_epochs},
        sampler={"name": "random", "seed": 0}, pruner={"name": "none"}, fixed=FAST_FIXED, space=C1_LR,
    )
    spec = load_spec(str(path))
    url = f"sqlite:///{tmp_path / 'v.db'}"
    run_search(spec, url, 2, workers=1, threads=1, device="cpu")
    study = optuna.load_study(study_name="v", storage=url)
    data = spec.load_data()
    subset = data.val_subset(100, spec.split_seed)
    recorded = study_record(optuna.storages.RDBStorage(url), "v")["val_subset"]
    assert recorded == {"images": 100, "seed": 0, "sha256": split_digest(subset)}
    for t in study.trials:
        values = t.intermediate_values
        assert set(values) == {800, 1600, 2400, 3200}
        cfg, precision = TrialConfig.from_dict(t.user_attrs["config"]), t.user_attrs["precision"]
        seen = []
        alone = train(cfg, data, device="cpu", precision=precision,
                      probe=Probe((0.5, 1.5), subset, seen.append, epoch_ends=subset_epochs))
        assert {p.images: p.acc for p in seen} == {800: values[800], 2400: values[2400]}  # the subset's 100 images
        on_subset = (800, 2400, 1600) if subset_epochs else (800, 2400)
        assert all(abs(values[s] * 100 - round(values[s] * 100)) < 1e-4 for s in on_subset)
        assert t.value == values[3200] == alone.history[-1].eval_acc  # the whole split, after the full budget
        assert alone.history[-1].split == "val" and len(data.val) != 100
        assert values[1600] == alone.history[0].eval_acc  # the end of epoch 1: the subset or the whole split
        assert alone.history[0].split == ("val_subset" if subset_epochs else "val")
        assert t.user_attrs["history"][0]["split"] == ("val_subset" if subset_epochs else "val")


# --- warm start, named metrics, what the CLI shows ---------------------------------------------------


def searched_source(tmp_path, trials=4):
    path = write_study(tmp_path, "src", study=SYNTHETIC, sampler={"name": "random", "seed": 1}, pruner={"name": "none"},
                       fixed=FAST_FIXED, space=C1_LR)
    url = f"sqlite:///{tmp_path / 'src.db'}"
    run_search(load_spec(str(path)), url, trials, workers=1, threads=1, device="cpu")
    best = sorted((t for t in optuna.load_study(study_name="src", storage=url).trials), key=lambda t: -t.value)
    return url, best


@pytest.mark.slow
def test_a_warm_start_enqueues_the_best_trials_of_another_study_and_counts_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url, best = searched_source(tmp_path)
    path = write_study(tmp_path, "dst", study=SYNTHETIC, sampler={"name": "random", "seed": 2}, pruner={"name": "none"},
                       fixed=FAST_FIXED, space=C1_LR)
    dst = f"sqlite:///{tmp_path / 'dst.db'}"
    warm = WarmStart("src", url, 3)
    summary = run_search(load_spec(str(path)), dst, 5, workers=1, threads=1, device="cpu", warm=warm)
    trials = sorted(optuna.load_study(study_name="dst", storage=dst).trials, key=lambda t: t.number)
    assert summary.n_complete == 5 and len(trials) == 5  # the 3 enqueued count toward the 5
    assert [t.params for t in trials[:3]] == [t.params for t in best[:3]]
    assert [t.user_attrs["warm_start"] for t in trials[:3]] == [f"src trial {t.number}" for t in best[:3]]
    record = study_record(optuna.storages.RDBStorage(dst), "dst")["warm_start"]
    assert record["study"] == "src" and [r["trial"] for r in record["trials"]] == [t.number for t in best[:3]]
    assert optuna.load_study(study_name="dst", storage=dst).user_attrs["warm_start"] == "src: 3 trials"
    again = run_search(load_spec(str(path)), dst, 6, workers=1, threads=1, device="cpu", warm=warm)
    assert again.n_complete == 6  # a rerun does not enqueue them twice


@pytest.mark.slow
def test_a_warm_start_into_a_narrower_space_names_what_it_leaves_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url, best = searched_source(tmp_path)
    narrow = {"c1": {"low": 4, "high": 8}, "lr": {"low": 1e-3, "high": 1.01e-3, "log": True}}  # lr: one value
    path = write_study(tmp_path, "narrow", study=SYNTHETIC, sampler={"name": "random", "seed": 2},
                       pruner={"name": "none"}, fixed=FAST_FIXED, space=narrow)
    dst = f"sqlite:///{tmp_path / 'narrow.db'}"
    run_search(load_spec(str(path)), dst, 4, workers=1, threads=1, device="cpu", warm=WarmStart("src", url, 4))
    trials = optuna.load_study(study_name="narrow", storage=dst).trials
    warm = sorted((t for t in trials if "warm_start" in t.user_attrs), key=lambda t: t.number)
    distinct = list(dict.fromkeys(t.params["c1"] for t in best))  # lr dropped: trials alike but for it merge
    assert [t.params["c1"] for t in warm] == distinct  # kept, in the source's order
    for t in warm:
        source = next(s for s in best if f"src trial {s.number}" == t.user_attrs["warm_start"])
        assert 1e-3 <= t.params["lr"] <= 1.01e-3  # drawn anew in this space
        assert t.user_attrs["warm_start_dropped"] == [f"lr={source.params['lr']!r} (outside this space)"]
    record = study_record(optuna.storages.RDBStorage(dst), "narrow")["warm_start"]
    assert len(record["trials"]) == len(distinct) and len(record["skipped"]) == 4 - len(distinct)
    assert all("the same as trial" in line and "without lr=" in line for line in record["skipped"])


def test_a_warm_start_from_a_missing_study_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url, _ = searched_source(tmp_path, trials=1)
    path = write_study(tmp_path, "dst", study=SYNTHETIC, pruner={"name": "none"}, fixed=FAST_FIXED, space=C1_LR)
    argv = ["search", "--study", str(path), "--trials", "2", "--workers", "1", "--threads", "1", "--device", "cpu"]
    assert main([*argv, "--warm-start", "nope", "--warm-start-storage", url]) == 1
    err = capsys.readouterr().err
    assert "no study 'nope' in sqlite:///" in err and "studies there: src" in err
    assert not (tmp_path / "studies").exists() and not list(tmp_path.glob("dst.db*"))


@pytest.mark.slow
def test_metric_names_and_short_user_attributes_for_the_optuna_cli(study_file, tmp_path, storage_url):
    path = study_file()
    url = storage_url
    run_search(load_spec(str(path)), url, 2, workers=1, threads=1, device="cpu")
    study = optuna.load_study(study_name="t", storage=url)
    assert study.metric_names == ["val_accuracy"]
    assert all(len(str(v)) < 60 for v in study.user_attrs.values()), study.user_attrs
    record = study_record(optuna.storages.RDBStorage(url), "t")
    assert record["study_file"] == path.read_text() and record["data"]["n_val"] == 400  # in full, for tools
    optuna_cli = [sys.executable, "-c", "from optuna.cli import main; main()"]
    studies = subprocess.run([*optuna_cli, "studies", "--storage", url], capture_output=True, text=True, check=True)
    assert max(len(line) for line in studies.stdout.splitlines()) < 250 and "t.toml (sha256 " in studies.stdout
    best = subprocess.run([*optuna_cli, "best-trial", "--study-name", "t", "--storage", url, "-f", "json"],
                          capture_output=True, text=True, check=True)
    assert "val_accuracy" in best.stdout
    rows = subprocess.run([*optuna_cli, "trials", "--study-name", "t", "--storage", url],
                          capture_output=True, text=True, check=True)
    assert "val_accuracy" in rows.stdout


def test_a_one_trial_search_that_ran_only_the_baseline_succeeds(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path, "one", study=SYNTHETIC, space={"c1": {"low": 4, "high": 8}})
    argv = ["search", "--study", str(path), "--trials", "1", "--workers", "1", "--threads", "1", "--device", "cpu"]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0 and "1 complete, 0 pruned, 0 failed" in out and "beside the baseline" in out


def test_a_warm_start_from_the_study_itself_is_refused_and_leaves_nothing_waiting(study_file, tmp_path, capsys):
    study_file = study_file()
    url = f"sqlite:///{tmp_path / 't.db'}"
    run_search(load_spec(str(study_file)), url, 2, workers=1, threads=1, device="cpu")
    argv = ["search", "--study", str(study_file), "--trials", "3", "--storage", url, "--warm-start", "t",
            "--workers", "1", "--device", "cpu"]
    assert main(argv) == 1
    assert "names study 't' itself" in capsys.readouterr().err
    trials = optuna.load_study(study_name="t", storage=url).trials
    assert len(trials) == 2 and not [t for t in trials if t.state == TrialState.WAITING]


def test_a_trial_failed_while_being_claimed_is_retried_once_and_a_claimed_failure_is_not():
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 0.5})  # an enqueued trial has its params before any worker names itself
    study.tell(study.ask(x), state=TrialState.FAIL)  # an interrupt landed before the claim was marked
    claimed = study.ask(x)
    claimed.set_user_attr("claimed", claimed.number)
    study.tell(claimed, state=TrialState.FAIL)  # failed while running under a worker: the heartbeats' business
    for _ in range(2):
        fail_orphans(study, max_retry=3)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.params, t.system_attrs["retry_history"]) for t in waiting] == [({"x": 0.5}, [0])]
