"""Where lenet-hpo keeps its outputs, and how it writes them.

Every file is written to a temporary name in its folder and renamed into place, so a
reader (or a crash) sees the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import io
import os
import secrets
import sys
from pathlib import Path

import torch

from lenet_hpo.errors import ConfigError

STUDIES = "studies"  # study files; each study's SQLite database and retrain runs beside them
REPORTS = "reports"
RUNS = "runs"  # checkpoints of `train`
CACHE_ENV = "LENET_HPO_CACHE_DIR"
HOME_ENV = "LENET_HPO_HOME"


def project_dir() -> Path:
    """The folder studies/, data/, reports/ and runs/ live in: $LENET_HPO_HOME, else the
    working directory or the nearest folder above it with a studies/ folder of study files
    (so a notebook in examples/ uses the project's), else the working directory.  Relative
    (".") when it is the working directory, so paths print as the user typed them."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    here = Path.cwd()
    for folder in (here, *here.parents):
        if any((folder / STUDIES).glob("*.toml")):
            return Path() if folder == here else folder
    return Path()


def installed_studies() -> Path:
    """Where `pip install` put the project's study files (pyproject's data-files)."""
    return Path(sys.prefix) / "share" / "lenet-hpo" / STUDIES


def studies_dir() -> Path:
    return project_dir() / STUDIES


def reports_dir() -> Path:
    return project_dir() / REPORTS


def runs_dir() -> Path:
    return project_dir() / RUNS


def cache_dir() -> Path:
    """Per-user cache shared by every clone: $LENET_HPO_CACHE_DIR, else ~/.cache/lenet-hpo."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lenet-hpo"


def check_output_dir(path: Path, what: str = "output folder") -> Path:
    """`path` can be the folder outputs go to: it is a folder, or can be made in a writable one.
    Checked before any work starts, so a run is never thrown away for want of a place to save it."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder; give a folder (it is made when missing)")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder; give a folder (it is made when missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot write in {existing}; give a folder you can write to")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open applies the umask to 0o666, so the file gets the usual permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
