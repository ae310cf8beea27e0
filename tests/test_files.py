from pathlib import Path

import pytest

from lenet_hpo.files import atomic_write_bytes


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"abc")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"abc" and (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_a_notebook_in_a_subfolder_uses_the_projects_folders(tmp_path, monkeypatch):
    from lenet_hpo.acquire import DATA_DIR_ENV, default_data_dir
    from lenet_hpo.files import HOME_ENV, project_dir, reports_dir, runs_dir, studies_dir
    from lenet_hpo.search.storage import storage_url
    from lenet_hpo.search.studyfile import study_path

    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv("LENET_HPO_STORAGE", raising=False)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "s.toml").write_text("[study]\n")
    (tmp_path / "examples" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "examples" / "deeper")
    assert project_dir() == tmp_path
    assert studies_dir() == tmp_path / "studies" and reports_dir() == tmp_path / "reports"
    assert runs_dir() == tmp_path / "runs" and default_data_dir() == tmp_path / "data"
    assert study_path("s") == tmp_path / "studies" / "s.toml"
    assert storage_url("s") == f"sqlite:///{tmp_path / 'studies' / 's.db'}"
    monkeypatch.chdir(tmp_path)  # in the project itself: relative paths, as typed
    assert project_dir() == Path() and studies_dir() == Path("studies")
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "elsewhere"))
    assert studies_dir() == tmp_path / "elsewhere" / "studies"
    monkeypatch.delenv(HOME_ENV)
    bare = tmp_path / "studies" / "empty"  # a studies/ folder without study files is no project
    bare.mkdir()
    monkeypatch.chdir(bare)
    assert project_dir() == tmp_path


@pytest.mark.slow
def test_pip_install_gives_a_working_package_with_its_study_files(tmp_path):
    """`pip install .` into a fresh environment: the package, its data file and the study files,
    found from a folder with no studies/ of its own."""
    import os
    import subprocess
    import sys
    import venv

    root = Path(__file__).resolve().parents[1]
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # build isolation: pip fetches the build backend (setuptools) from the package index, as a user's would
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", str(root)]
    done = subprocess.run(install, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    site = [p for p in sys.path if p.endswith("site-packages")]  # torch, optuna, ... from this environment
    code = ("import lenet_hpo as lh, importlib.resources as r; s = lh.load_spec('mnist');"
            " print(s.path); print(r.files('lenet_hpo').joinpath('digits_7x12.txt').is_file()); print(lh.__file__)")
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(site)})
    assert run.returncode == 0, run.stderr
    path, data_file, module = run.stdout.split()
    assert path == str(env_dir / "share" / "lenet-hpo" / "studies" / "mnist.toml")
    assert data_file == "True" and module.startswith(str(env_dir))
