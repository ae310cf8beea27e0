import json
import shutil
import subprocess

import optuna
import pytest
import torch
from PIL import Image

from lenet_hpo.checkpoint import load_checkpoint
from lenet_hpo.cli import main
from lenet_hpo.config import BASELINE
from lenet_hpo.errors import StudyError
from lenet_hpo.report import build_report, config_table
from lenet_hpo.retrain import retrain_best
from lenet_hpo.search import load_spec_data, run_search
from lenet_hpo.space import load_spec
from lenet_hpo.train import resolve_precision

STUDY = """
[study]
dataset = "synthetic"
val_size = 400
epochs = 2
[sampler]
name = "random"
seed = 0
[pruner]
name = "none"
[fixed]
pooling = "max"
optimizer = "adam"
[space]
c1 = { low = 4, high = 8 }
activation = { choices = ["tanh", "relu"] }
lr = { low = 1e-3, high = 1e-2, log = true }
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished 4-trial synthetic study in a temp working directory."""
    root = tmp_path_factory.mktemp("study")
    (root / "s.toml").write_text(STUDY)
    url = f"sqlite:///{root / 's.db'}"
    run_search(load_spec(str(root / "s.toml")), url, 4, workers=1, threads=1, device="cpu", progress=False)
    return root, url


@pytest.fixture(scope="module")
def retrained(searched):
    root, url = searched
    result = retrain_best("s", url, seeds=3, epochs=2, device="cpu", workers=2, studies_dir=root / "studies")
    return root, url, result


def test_retrain_best_is_fair_and_complete(retrained):
    root, url, r = retrained
    study = optuna.load_study(study_name="s", storage=url)
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.values[0])
    assert r["trial"] == best.number
    assert r["best"]["config"]["epochs"] == r["baseline"]["config"]["epochs"] == 2
    assert r["baseline"]["config"] == BASELINE.replace(epochs=2).to_dict()
    for role in ("best", "baseline"):
        block = r[role]
        assert block["seeds"] == [0, 1, 2] and len(block["test_accuracy"]) == 3
        assert block["mean"] == pytest.approx(sum(block["test_accuracy"]) / 3)
        assert block["ci95"][0] <= block["mean"] <= block["ci95"][1]
        for seed, path in zip(block["seeds"], block["checkpoints"], strict=True):
            ck = load_checkpoint(path)
            assert ck.config.seed == seed and ck.data["n_train"] + ck.data["n_val"] == 2000  # fitted on train + val
            assert ck.extra["history"][-1]["val_acc"] == pytest.approx(block["test_accuracy"][seed])
    expected = resolve_precision("auto", BASELINE, torch.device("cpu"))  # the study's default precision
    assert r["best"]["precision"] == r["baseline"]["precision"] == expected
    d = r["difference"]
    assert d["test"] == "paired t-test" and 0 <= d["p_value"] <= 1 and d["verdict"]
    assert (root / "studies" / "s" / "retrain" / "results.csv").read_text().count("\n") == 7


def test_rerun_skips_runs_already_done(retrained, monkeypatch):
    root, url, first = retrained
    import lenet_hpo.retrain as R

    def boom(*a, **k):
        raise AssertionError("should not train again")

    monkeypatch.setattr(R, "train", boom)
    again = retrain_best("s", url, seeds=3, epochs=2, device="cpu", workers=1, studies_dir=root / "studies")
    assert again["best"]["test_accuracy"] == first["best"]["test_accuracy"]


def test_a_run_done_in_another_precision_is_trained_again(retrained, tmp_path, monkeypatch):
    root, url, first = retrained
    import lenet_hpo.retrain as R

    done = first["best"]["precision"]
    other = "fp32" if done == "bf16" else "bf16"
    shutil.copy(first["best"]["checkpoints"][0], tmp_path / "best-seed0.pt")
    ck = load_checkpoint(tmp_path / "best-seed0.pt")
    data = load_spec_data(load_spec(str(root / "s.toml")))

    class Trained(Exception):
        pass

    def refuse(*a, **k):
        raise Trained

    monkeypatch.setattr(R, "train", refuse)
    run = R._run_one("best", ck.config, data, tmp_path, torch.device("cpu"), {}, done)  # the same precision: reused
    assert run.precision == done and run.test_accuracy == first["best"]["test_accuracy"][0]
    with pytest.raises(Trained):
        R._run_one("best", ck.config, data, tmp_path, torch.device("cpu"), {}, other)


def test_top_k_rescoring_on_validation(searched, tmp_path):
    root, url = searched
    r = retrain_best("s", url, seeds=2, epochs=1, top_k=2, device="cpu", workers=1, studies_dir=tmp_path)
    assert len(r["rescored"]) == 2 and r["trial"] in {row["trial"] for row in r["rescored"]}
    chosen = max(r["rescored"], key=lambda row: row["rescored_mean"])
    assert r["trial"] == chosen["trial"] and len(chosen["rescored"]) == 2


def test_clear_errors(searched, tmp_path, capsys):
    root, url = searched
    with pytest.raises(StudyError, match=r"no study 'nope' .*studies there: s"):
        retrain_best("nope", url, seeds=2, device="cpu", studies_dir=tmp_path)
    empty_url = f"sqlite:///{tmp_path / 'e.db'}"
    study = optuna.create_study(study_name="e", storage=empty_url)
    study.set_user_attr("study_file", STUDY)
    t = study.ask()
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(StudyError, match="no completed trial .*1 failed"):
        retrain_best("e", empty_url, seeds=2, device="cpu", studies_dir=tmp_path)
    assert main(["retrain-best", "--study", "s", "--storage", url, "--baselines", "nonesuch"]) == 2
    assert "unknown name 'nonesuch'" in capsys.readouterr().err
    assert main(["report", "--study", "../x", "--storage", url]) == 1
    assert "not allowed" in capsys.readouterr().err


def test_retrain_cli_json(searched, tmp_path, monkeypatch, capsys):
    root, url = searched
    monkeypatch.chdir(tmp_path)
    argv = ["retrain-best", "--study", "s", "--storage", url, "--seeds", "2", "--epochs", "1", "--device", "cpu", "--workers", "1"]
    assert main([*argv, "--precision", "fp32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for role in ("best", "baseline"):
        assert {"config", "test_accuracy", "mean", "std", "ci95"} <= set(out[role])
        assert out[role]["precision"] == "fp32"  # --precision wins over the study's auto
    assert {"ci95", "p_value", "test", "verdict"} <= set(out["difference"])
    assert (tmp_path / "studies" / "s" / "retrain" / "best-seed1.pt").exists()


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


def test_report_html_opens_offline_without_js_errors(retrained, tmp_path):
    root, url, _ = retrained
    files = build_report("s", url, out_dir=tmp_path / "reports", studies_dir=root / "studies")
    text = files.html.read_text()
    assert "<script src=" not in text  # plotly.js is embedded: nothing to fetch
    assert "Comparison" in text and "What makes this comparison fair" in text and "Misclassified" in text
    md = files.markdown.read_text()
    assert "**Verdict:**" in md and "| best |" in md and "| baseline |" in md
    assert "| setting | best | baseline |" in md and "The same for all: " in md
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert "| precision |" in header and f"| {retrained[2]['best']['precision']} |" in md
    exe = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", files.html.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "data-js-errors=" not in dom  # set by the page's error hook on any script error
    broken = tmp_path / "broken.html"  # the hook does catch errors
    broken.write_text(text.replace("</main>", "<script>notDefined()</script></main>"))
    broken_dom = subprocess.run([exe, *flags, "--dump-dom", broken.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-js-errors="' in broken_dom and "notDefined" in broken_dom
    assert dom.count('class="main-svg"') >= 8  # plotly drew the figures
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *flags, "--window-size=1280,1600", f"--screenshot={shot}", files.html.as_uri()], capture_output=True, timeout=120)
    img = Image.open(shot).convert("L")
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float()
    assert img.size == (1280, 1600) and pixels.std() > 20  # not blank
    # the comparison table and the first plot are in the first screen
    assert dom.index('class="dataframe comparison"') < dom.index('class="main-svg"')


def test_config_table_shows_the_differences_and_leaves_out_what_applies_to_neither():
    best = BASELINE.replace(optimizer="adamw", lr=0.02, c3=33).to_dict()
    differ, shared = config_table({"best": best, "baseline": BASELINE.to_dict()})
    assert set(differ.index) == {"optimizer", "lr", "c3", "momentum", "nesterov"}
    assert list(differ.columns) == ["best", "baseline"] and differ.loc["c3", "best"] == 33
    assert differ.loc["momentum"].tolist() == ["n/a", BASELINE.momentum]  # an SGD setting: the baseline's only
    assert shared["c1"] == 6 and shared["epochs"] == BASELINE.epochs
    assert not {"sdlm_mu", "sdlm_samples", "sdlm_curvature", "map_j"} & (set(differ.index) | set(shared))
