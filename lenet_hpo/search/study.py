"""Creating or resuming a study: its record, the baseline trial, a warm start.

A study goes on only from the same study file (comments aside), on the same data and in
the same step unit; what makes it reproducible is recorded in its system attributes
(`studies.study_record`), a short account in its user attributes (what `optuna studies`
and the dashboard show).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import platform
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from lenet_hpo import __version__
from lenet_hpo.acquire import default_data_dir
from lenet_hpo.config import BASELINE
from lenet_hpo.data import Dataset, split_digest
from lenet_hpo.errors import StorageError, StudyError, experimental_used_knowingly
from lenet_hpo.folders import what_changed
from lenet_hpo.search.space import StudySpec, params_for, params_in_space
from lenet_hpo.search.storage import (
    ClaimLock,
    Heartbeat,
    failure_reason,
    mask_url,
    open_storage,
    storage_identity,
)
from lenet_hpo.search.studies import BASELINE_ROLE, ROLE, best_trials, open_study, study_record, write_record

log = logging.getLogger(__name__)
STEP_UNIT = "images"  # what a trial's steps count: training images seen (recorded in every study)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "optuna", "sqlalchemy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["lenet-hpo"] = __version__
    return out




@dataclass(frozen=True)
class WarmStart:
    """Start a study from the best finished trials of another (`search --warm-start`)."""

    study: str
    url: str  # its storage
    top: int = 5


def prepare_study(
    spec: StudySpec, url: str, data: Dataset, *, heartbeat: Heartbeat, sampler_seed: int | None = None,
    data_dir: Path | None = None, warm: WarmStart | None = None,
) -> optuna.Study:
    """Create the study (or load it, checking it was made from the same file and data),
    record what makes it reproducible, and enqueue BASELINE when it lies in the space, then
    the warm start's trials.  Under the claim lock, so searches started at the same moment
    on several machines create the study, its baseline and warm-start trials once."""
    if warm and warm.study == spec.name and storage_identity(warm.url) == storage_identity(url):
        raise StudyError(
            f"--warm-start names study {spec.name!r} itself: a study cannot start from its own trials; name"
            " another study (and --warm-start-storage if it lives elsewhere)"
        )
    source = best_trials(open_study(warm.study, warm.url).study, k=warm.top) if warm else []  # errors before writing
    storage = open_storage(url, heartbeat=heartbeat)
    lock = ClaimLock(url, spec.name)
    try:
        lock.acquire()
        record = study_record(storage, spec.name)
        if record:
            _check_resumable(spec, url, storage, data, data_dir, record)
            earlier = record.get("warm_start", {}).get("study")
            if warm and earlier not in (None, warm.study):
                raise StudyError(f"study {spec.name!r} was warm-started from {earlier!r} already")
        study = optuna.create_study(
            study_name=spec.name, storage=storage, directions=spec.directions, load_if_exists=True,
            sampler=spec.make_sampler(sampler_seed),
            pruner=spec.make_pruner(len(data.train), spec.check_images(len(data.val))),
        )
        if not record:
            _record_new_study(study, storage, spec, data)
        if warm and "warm_start" not in record:
            _warm_start(study, storage, spec, warm, source)
        return study
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
        raise StorageError(
            f"cannot write study {spec.name!r} to {mask_url(url)}: {failure_reason(cause, url)}. A read-only file or"
            " database? Give --storage a database you can write to"
        ) from None
    finally:
        lock.close()


def _same_settings(stored: str | None, text: str) -> bool:
    """Whether a study created from `stored` may go on with the file `text`: the same settings
    (comments may differ)."""
    if stored is None or stored == text:
        return True
    try:
        return tomllib.loads(stored) == tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False


def _check_resumable(
    spec: StudySpec, url: str, storage: optuna.storages.BaseStorage, data: Dataset, data_dir: Path | None,
    record: dict[str, Any],
) -> None:
    """An existing study goes on only from the same settings, on the same data, in the same step unit."""
    if not _same_settings(record.get("study_file"), spec.text):
        raise StudyError(
            f"study {spec.name!r} in {mask_url(url)} was created from a different version of {spec.path};"
            " restore that file, or give the changed file another name to start a new study"
        )
    if record.get("data", {}).get("checksum") not in (None, data.checksum):
        change = _data_change(record["data"], data, data_dir)
        raise StudyError(f"study {spec.name!r} was run on other data: {change}; restore it, or use a new name")
    if record.get("step_unit") != STEP_UNIT and _reported_per_epoch(storage, spec.name):
        raise StudyError(
            f"study {spec.name!r} was created by an older lenet-hpo whose trials reported per epoch, not per"
            " training image; start a new study (another name) or finish this one with that version"
        )


def _record_new_study(
    study: optuna.Study, storage: optuna.storages.BaseStorage, spec: StudySpec, data: Dataset
) -> None:
    """What makes the study reproducible, in full in its system attributes (`studies.study_record`);
    its user attributes, which `optuna studies` and the dashboard show, stay short."""
    subset = data.val_subset(spec.val_subset, spec.split_seed)
    full = {
        "study_file": spec.text,
        "study_dir": str(spec.base),  # where a folder dataset's relative path starts
        "data": data.meta(),
        "val_subset": {"images": len(subset), "seed": spec.split_seed, "sha256": split_digest(subset)},
        "objectives": list(spec.objectives),
        "versions": package_versions(),
        "step_unit": STEP_UNIT,
    }
    for key, value in full.items():
        write_record(storage, spec.name, key, value)
    with experimental_used_knowingly():
        study.set_metric_names(list(spec.objectives))
    name = spec.path.name if spec.path else f"{spec.name}.toml"
    study.set_user_attr("study_file", f"{name} (sha256 {hashlib.sha256(spec.text.encode()).hexdigest()[:12]})")
    study.set_user_attr("dataset", f"{data.name} (checksum {data.checksum[:12]})")
    study.set_user_attr("lenet_hpo", __version__)
    baseline = params_for(BASELINE, spec)
    if baseline is not None:
        study.enqueue_trial(baseline, user_attrs={ROLE: BASELINE_ROLE}, skip_if_exists=True)
    for i in range(len(spec.start)):  # the file's known-good configurations: candidates like any draw
        study.enqueue_trial(spec.start_params(i), user_attrs={"start": i + 1}, skip_if_exists=True)
    log.info("created study %s (baseline %s)", spec.name, "enqueued" if baseline else "outside the space")


def _warm_start(
    study: optuna.Study, storage: optuna.storages.BaseStorage, spec: StudySpec, warm: WarmStart,
    source: list[FrozenTrial],
) -> None:
    """Enqueue the source study's best trials, each with the params that lie in this study's
    space (the others are dropped and named: the sampler draws them anew), and record it."""
    done, skipped, seen = [], [], {}
    for t in source:
        kept, dropped = params_in_space(t.params, spec)
        same = seen.setdefault(tuple(sorted(kept.items())), t.number)
        if same != t.number:  # adapted, it is a trial already enqueued
            skipped.append(f"trial {t.number}: the same as trial {same} without {', '.join(dropped)}")
            continue
        attrs: dict[str, Any] = {"warm_start": f"{warm.study} trial {t.number}"}
        if dropped:
            attrs["warm_start_dropped"] = dropped
        study.enqueue_trial(kept, user_attrs=attrs)
        done.append({"trial": t.number, "value": t.values[0], "params": kept, "dropped": dropped})
    record = {"study": warm.study, "storage": mask_url(warm.url), "trials": done, "skipped": skipped}
    write_record(storage, spec.name, "warm_start", record)
    adapted = sum(bool(d["dropped"]) for d in done)
    extra = (f", {adapted} adapted" if adapted else "") + (f", {len(skipped)} skipped" if skipped else "")
    study.set_user_attr("warm_start", f"{warm.study}: {len(done)} trials{extra}")


def _data_change(stored: dict[str, Any], data: Dataset, data_dir: Path | None) -> str:
    """What differs between the data a study began on and `data`, in words."""
    old, new = stored.get("source", {}), data.source
    if old.get("files_checksum") and new.get("path"):
        changes = what_changed(data_dir or default_data_dir(), new["path"], old["files_checksum"])
        return f"in {new['path']}, {changes}"
    was = f"{stored.get('dataset')!r} (checksum {str(stored.get('checksum'))[:12]}…)"
    return f"it began on {was}, this is {data.name!r} ({data.checksum[:12]}…)"


def _reported_per_epoch(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """Whether a study without a recorded step unit has trials that reported (then per epoch)."""
    study = optuna.load_study(study_name=name, storage=storage)
    return any(t.intermediate_values for t in study.get_trials(deepcopy=False))


