"""The notebooks under examples/ run top to bottom in a fresh Jupyter kernel (nbclient), as a
user would run them, and show what they promise; an HTML export of the quickstart is checked in
headless Chromium.  `make notebooks` runs this file alone."""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
TOGETHER_S = 600  # every notebook together, in CI


def test_there_are_notebooks_and_they_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == ["quickstart.ipynb", "your-images.ipynb"]
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs"


@pytest.fixture(scope="module")
def executed(tmp_path_factory, mnist_dir):
    """Every notebook, executed in a fresh kernel in a folder of its own: {name: notebook}."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    home = tmp_path_factory.mktemp("home")
    (home / "studies").mkdir()
    shutil.copy(ROOT / "studies" / "smoke.toml", home / "studies")
    env = {"LENET_HPO_HOME": str(home), "LENET_HPO_DATA_DIR": str(mnist_dir.resolve()), "PYTHONPATH": str(ROOT)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them
    out, start = {}, time.monotonic()
    try:
        for path in NOTEBOOKS:
            nb = nbformat.read(path, as_version=4)
            where = {"metadata": {"path": str(home)}}  # the kernel's working directory
            NotebookClient(nb, timeout=TOGETHER_S, kernel_name="python3", resources=where).execute()
            out[path.name] = nb
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out["seconds"] = time.monotonic() - start
    return out


def outputs(nb, source_part):
    """The outputs of the code cell whose source contains `source_part`."""
    cells = [c for c in nb.cells if c.cell_type == "code" and source_part in c.source]
    assert len(cells) == 1, source_part
    return cells[0].outputs


def html_of(outs):
    shown = [o for o in outs if o.output_type in ("display_data", "execute_result")]
    return "".join(o.get("data", {}).get("text/html", "") for o in shown)


@pytest.mark.realdata
@pytest.mark.slow
def test_the_notebooks_run_and_show_progress_verdict_and_figures(executed):
    assert executed["seconds"] < TOGETHER_S
    quick = executed["quickstart.ipynb"]
    for nb in (quick, executed["your-images.ipynb"]):
        assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    search = outputs(quick, "lh.run_search(")
    progress = [o for o in search if "lenet-hpo-progress" in o.get("data", {}).get("text/html", "")]
    assert len(progress) == 1 and "4/4 trials" in progress[0].data["text/html"]  # one display, updated in place
    assert re.search(r"SearchSummary\(study (&#x27;|')smoke", html_of(search))
    retrain = outputs(quick, "lh.retrain_best(")
    progress = [o for o in retrain if "lenet-hpo-progress" in o.get("data", {}).get("text/html", "")]
    assert len(progress) == 1 and "verdict after 2 of at most 2 seed pairs" in progress[0].data["text/html"]
    verdict = html_of(retrain)
    assert "best - baseline (points)" in verdict and verdict.count("<table") >= 2 and "p = " in verdict
    assert "quantity" in html_of(outputs(quick, "lh.how_sure("))
    for title in ("Test accuracy", "The difference with test-set noise", "Learning curves"):
        figure = outputs(quick, f'figs["{title}"].show()')
        assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in figure), title
    folder = executed["your-images.ipynb"]
    assert "best - baseline (points)" in html_of(outputs(folder, "lh.retrain_best("))
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs(folder, "Confusion matrices"))


@pytest.mark.realdata
@pytest.mark.slow
def test_the_quickstart_exported_to_html_renders_in_chromium(executed, chromium, tmp_path):
    """What a reader of `jupyter nbconvert --to html` sees: one progress display per long call
    (in its final state), the verdict's tables, and the figures drawn by plotly.js offline."""
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(executed["quickstart.ipynb"])
    path = tmp_path / "quickstart.html"
    path.write_text(page)
    exe, flags = chromium
    dom = subprocess.run([exe, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("class=\"lenet-hpo-progress\"") == 2  # the search's and retrain-best's, nothing else
    assert "4/4 trials" in dom and "verdict after 2 of at most 2 seed pairs" in dom
    assert "best - baseline (points)" in dom and "How sure are we?" in dom
    drawn = len(re.findall(r"class=\"main-svg\"", dom))
    assert drawn >= 3 * 2, f"{drawn} plotly svg layers: the figures were not drawn"  # plotly draws 2+ per figure
