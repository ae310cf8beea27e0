"""Where lenet-hpo keeps its outputs, and how it writes them.

Every file is written to a temporary name in its folder and renamed into place, so a
reader (or a crash) sees the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

import torch

STUDIES_DIR = Path("studies")  # study files; each study's SQLite database and retrain runs beside them
REPORTS_DIR = Path("reports")
RUNS_DIR = Path("runs")  # checkpoints of `train`
CACHE_ENV = "LENET_HPO_CACHE_DIR"


def cache_dir() -> Path:
    """Per-user cache shared by every clone: $LENET_HPO_CACHE_DIR, else ~/.cache/lenet-hpo."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lenet-hpo"


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
