"""The public Python API: `lenet_hpo.__all__` is what the CLI calls and what they return, each
with a docstring; nothing private leaks; the README's example runs as written."""

import inspect
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import lenet_hpo

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_exists_is_documented_and_public():
    assert lenet_hpo.__all__ == sorted(lenet_hpo.__all__)
    for name in lenet_hpo.__all__:
        assert not name.startswith("_"), name
        value = getattr(lenet_hpo, name)
        doc = (inspect.getdoc(value) or "").strip()
        auto = inspect.isclass(value) and doc.startswith(f"{value.__name__}(")  # a dataclass's generated one
        assert doc and not auto, f"lenet_hpo.{name} has no docstring"
        module = getattr(value, "__module__", None) or type(value).__module__
        assert module.startswith("lenet_hpo"), f"lenet_hpo.{name} comes from {module}"


def test_nothing_else_is_public():
    """As in encode/httpx's test_exported_members: the package's public members are exactly __all__
    (submodules and __version__ aside)."""
    for name in lenet_hpo.__all__:
        getattr(lenet_hpo, name)  # load them all
    members = {n for n, v in vars(lenet_hpo).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert members - {"annotations", "importlib", "TYPE_CHECKING", "Any"} == set(lenet_hpo.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lenet_hpo.nope  # noqa: B018


def test_the_cli_calls_the_api():
    """The commands are a thin layer over the exported functions."""
    cli = "".join((ROOT / "lenet_hpo" / f).read_text() for f in ("cli.py", "arguments.py"))
    for name in ("load_spec", "run_search", "retrain_best", "build_report", "train_final", "open_checkpoint",
                 "predict_images", "load_data", "export"):
        assert name in lenet_hpo.__all__ and re.search(rf"\b{name}\(", cli), name


def test_importing_the_package_loads_neither_torch_nor_optuna():
    code = "import sys, lenet_hpo; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.realdata
def test_the_readme_python_api_example_runs(mnist_dir, tmp_path, monkeypatch):
    """The README's example, as written, in a folder with the project's smoke study."""
    (tmp_path / "studies").mkdir()
    shutil.copy(ROOT / "studies" / "smoke.toml", tmp_path / "studies")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LENET_HPO_DATA_DIR", str(mnist_dir.resolve()))
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    result = scope["result"]
    assert isinstance(result, lenet_hpo.RetrainResult) and result.n_seeds >= 2
    assert repr(result).startswith("RetrainResult(study ") and result._repr_html_().count("<table") == 2
    assert set(result.to_frame().columns) >= {"best", "baseline"}
    assert all(hasattr(f, "to_plotly_json") for f in scope["figs"].values()) and len(scope["figs"]) >= 3
    assert (tmp_path / "reports" / "smoke").is_dir()
    assert os.environ["LENET_HPO_DATA_DIR"] == str(mnist_dir.resolve())
