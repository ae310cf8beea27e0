import os
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from lenet_hpo.config import BASELINE
from lenet_hpo.report import build_report, config_table


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
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
    assert "| precision |" in header and f"| {retrained[2].models['best'].precision} |" in md
    exe = chromium()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--virtual-time-budget=10000",
    ]
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
