"""Study files for tests: one writer instead of TOML strings copied between test files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A fast study on the synthetic data (2,000 images): seconds per trial.
SYNTHETIC = {"dataset": "synthetic", "val_size": 400, "epochs": 2}
FAST_FIXED = {"activation": "relu", "pooling": "max", "optimizer": "adam"}
C1_LR = {"c1": {"low": 4, "high": 8}, "lr": {"low": 1e-3, "high": 1e-2, "log": True}}


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def study_text(**tables: dict[str, Any] | None) -> str:
    """A study file from its tables (study, sampler, pruner, fixed, space), in that order."""
    lines = []
    for name in ("study", "sampler", "pruner", "fixed", "space"):
        table = tables.get(name)
        if table:
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
            lines.append("")
    return "\n".join(lines)


def write_study(directory: Path, name: str, **tables: dict[str, Any] | None) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(study_text(**tables))
    return path


def stored_study(url: str, name: str, study_file: str = '[study]\ndataset = "mnist"\n'):
    """An empty study in `url` with `study_file` recorded, as `search` creates it; its StoredStudy."""
    import optuna

    from lenet_hpo.search.storage import open_storage
    from lenet_hpo.search.studies import open_study, write_record

    storage = open_storage(url, heartbeat=None)
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    write_record(storage, name, "study_file", study_file)
    return open_study(name, url)
