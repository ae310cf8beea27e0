from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from lenet_hpo.acquire import cache_path, default_data_dir
from lenet_hpo.data import Dataset, load_data
from lenet_hpo.files import CACHE_ENV

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test (and every process it starts) caches runs and layouts in a fresh folder,
    never in the user's ~/.cache/lenet-hpo."""
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def synthetic() -> Dataset:
    """2,000 train/validation and 500 test images of ten learnable classes."""
    return load_data("synthetic", val_size=400)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST cache made by `make data`; CI must have it, elsewhere the test skips."""
    data_dir = default_data_dir()
    if not cache_path("mnist", data_dir).exists():
        msg = f"real MNIST is not cached in {data_dir}: run `make data`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return data_dir


@pytest.fixture
def chromium(tmp_path):
    """(headless Chromium, its flags) for the browser tests; skips where it is not installed,
    fails under CI (which installs it)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000"]
    return exe, flags


# --- PostgreSQL: a server CI runs on 127.0.0.1:5432 (trust auth); each test gets its own database ---

POSTGRES_ENV = "LENET_HPO_TEST_POSTGRES_URL"
POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _admin_conninfo(url: str) -> str:
    """psycopg's conninfo for the server's `postgres` database."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The server URL (no database); skips where none is reachable, fails under CI."""
    url = os.environ.get(POSTGRES_ENV, POSTGRES_DEFAULT)
    try:
        import psycopg

        with psycopg.connect(_admin_conninfo(url), connect_timeout=3):
            pass
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable server
        from lenet_hpo.search.storage import mask_url

        msg = f"no PostgreSQL server at {mask_url(url)} ({type(exc).__name__}: {exc}); set {POSTGRES_ENV} or start one"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return url


@pytest.fixture
def postgres_url(postgres_server: str):
    """A fresh database `lenet_hpo_test_<random>`, dropped afterwards; yields its URL."""
    import secrets

    import psycopg

    name = f"lenet_hpo_test_{secrets.token_hex(4)}"
    with psycopg.connect(_admin_conninfo(postgres_server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{postgres_server.rstrip('/')}/{name}"
    finally:
        with psycopg.connect(_admin_conninfo(postgres_server), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path):
    """The same test on an SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


# --- a searched and retrained synthetic study, shared by the retrain and report tests ---


@pytest.fixture(scope="session")
def searched(tmp_path_factory):
    """A finished 4-trial synthetic study: (folder, storage URL, study file)."""
    from studyfiles import SYNTHETIC, write_study

    from lenet_hpo.search import run_search
    from lenet_hpo.search.studyfile import load_spec

    root = tmp_path_factory.mktemp("study")
    path = write_study(
        root,
        "s",
        study=SYNTHETIC,
        sampler={"name": "random", "seed": 0},
        pruner={"name": "none"},
        fixed={"pooling": "max", "optimizer": "adam"},
        space={
            "c1": {"low": 4, "high": 8},
            "activation": {"choices": ["tanh", "relu"]},
            "lr": {"low": 1e-3, "high": 1e-2, "log": True},
        },
    )
    url = f"sqlite:///{root / 's.db'}"
    run_search(load_spec(str(path)), url, 4, workers=1, threads=1, device="cpu")
    return root, url, path


@pytest.fixture(scope="session")
def retrained(searched):
    """The study retrained on 3 seeds of 2 epochs: (folder, storage URL, RetrainResult)."""
    from lenet_hpo.retrain import retrain_best

    root, url, _ = searched
    result = retrain_best("s", url, seeds=3, epochs=2, device="cpu", workers=2, studies_dir=root / "studies",
                          early_stop=False)
    return root, url, result
