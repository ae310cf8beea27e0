import json
import shutil
import subprocess

import optuna
import pytest
import torch
from PIL import Image

from lenet_hpo.cli import main
from lenet_hpo.config import BASELINE
from lenet_hpo.report import build_report, config_table
from lenet_hpo.search.studies import is_baseline
from lenet_hpo.stats import verdict


@pytest.mark.slow
def test_report_html_opens_offline_without_js_errors(retrained, tmp_path, chromium):
    root, url, _ = retrained
    files = build_report("s", url, out_dir=tmp_path / "reports", studies_dir=root / "studies")
    text = files.html.read_text()
    assert "<script src=" not in text  # plotly.js is embedded: nothing to fetch
    assert "Comparison" in text and "What makes this comparison fair" in text and "Misclassified" in text
    md = files.markdown.read_text()
    assert "**Verdict:**" in md and "| best |" in md and "| baseline |" in md
    assert "| setting | best | baseline |" in md and "The same for all: " in md
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert "| precision |" in header and f"| {retrained[2].models['best'].precision} |" in md
    exe, flags = chromium
    dom = subprocess.run(
        [exe, *flags, "--dump-dom", files.html.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert "data-js-errors=" not in dom  # set by the page's error hook on any script error
    broken = tmp_path / "broken.html"  # the hook does catch errors
    broken.write_text(text.replace("</main>", "<script>notDefined()</script></main>"))
    broken_dom = subprocess.run(
        [exe, *flags, "--dump-dom", broken.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert 'data-js-errors="' in broken_dom and "notDefined" in broken_dom
    assert dom.count('class="main-svg"') >= 8  # plotly drew the figures
    shot = tmp_path / "shot.png"
    subprocess.run(
        [exe, *flags, "--window-size=1280,1600", f"--screenshot={shot}", files.html.as_uri()],
        capture_output=True,
        timeout=120,
    )
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


def test_how_sure_are_we_in_html_markdown_and_json(retrained, tmp_path, monkeypatch, capsys):
    root, url, result = retrained
    files = build_report("s", url, out_dir=tmp_path / "reports", studies_dir=root / "studies")
    html, md = files.html.read_text(), files.markdown.read_text()
    assert "<h2>How sure are we?</h2>" in html and "## How sure are we?" in md
    first = md.split("## How sure are we?")[1].lstrip().splitlines()[0]
    assert first.startswith("Over 3 seeds the tuned model is")  # sentences first, numbers after
    assert "Drawing the seeds and the test images again 10,000 times" in md and "McNemar" in md
    assert "Dodge et al." in md and "lower bound" in md and "best-so-far" in md
    assert html.count('class="plotly-graph-div"') >= 2 + 8  # the two new figures and the others
    out = files.to_dict()
    diff = out["difference"]
    assert diff["test_set_ci95"][0] <= diff["difference"] <= diff["test_set_ci95"][1]
    assert 0 <= diff["prob_improvement"] <= 1 and [m["seed"] for m in diff["mcnemar"]] == [0, 1, 2]
    assert {"seed", "only_tuned_right", "only_baseline_right", "p_value"} == set(diff["mcnemar"][0])
    trials = optuna.load_study(study_name="s", storage=url).trials
    n = len([t for t in trials if not is_baseline(t)])
    assert [e["n_trials"] for e in out["expected_best"]] == list(range(1, n + 1))
    baseline_value = next((t.value for t in trials if is_baseline(t)), None)
    above = [e["n_trials"] for e in out["expected_best"] if baseline_value is not None and e["mean"] > baseline_value]
    assert out["trials_to_beat_baseline"] == (above[0] if above else None)
    assert diff == result.difference.to_dict()  # the report shows what retrain-best computed and kept
    monkeypatch.chdir(root)  # where the study's retrain results are: studies/s/retrain
    assert main(["report", "--study", "s", "--storage", url, "--out", str(tmp_path / "r2"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    same = ("verdict", "difference", "expected_best", "trials_to_beat_baseline")
    assert {k: printed[k] for k in same} == json.loads(json.dumps({k: out[k] for k in same}))


def test_a_study_retrained_before_predictions_were_kept_still_gets_its_report(retrained, tmp_path):
    root, url, _ = retrained
    studies = tmp_path / "studies"
    shutil.copytree(root / "studies" / "s", studies / "s")
    (path,) = (studies / "s").glob("*/retrain/summary.json")  # studies/s/<the study's key>/retrain
    text = path.read_text()
    summary = json.loads(text.replace(str(root / "studies"), str(studies)))
    for comparison in (summary["difference"], summary["comparisons"]["baseline"]):
        for key in ("test_set_ci95", "prob_improvement", "mcnemar"):
            comparison.pop(key)
        names = ("the tuned model", "the baseline")
        comparison["verdict"] = verdict(comparison["difference"], comparison["ci95"], comparison["p_value"], names)
    path.write_text(json.dumps(summary))
    for p in path.parent.glob("*.predictions.csv.gz"):
        p.unlink()
    files = build_report("s", url, out_dir=tmp_path / "reports", studies_dir=studies)
    md = files.markdown.read_text()
    assert "not available: these runs were retrained before their test predictions were kept; rerun retrain-best" in md
    assert files.to_dict()["difference"]["test_set_ci95"] is None and "test-set noise" not in files.verdict
