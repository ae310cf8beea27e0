"""A stored study: open it, read its definition, its best trials and its state counts.

What `retrain-best`, `report`, `predict` and the search's summary need of a study that
is already in a storage, without the search's worker machinery.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lenet_hpo.errors import StudyError
from lenet_hpo.files import studies_dir as default_studies_dir
from lenet_hpo.search.space import StudySpec, check_name
from lenet_hpo.search.storage import mask_url, open_storage, storage_identity
from lenet_hpo.search.studyfile import parse_spec

ROLE = "role"  # the user attribute that marks the enqueued baseline trial: the reference, never a candidate
BASELINE_ROLE = "baseline"
RECORD = "lenet_hpo:"  # prefix of the study system attributes that hold what lenet-hpo records


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def study_record(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    """What lenet-hpo recorded of a study in full (its file, data, versions, validation subset,
    warm start): the study system attributes `lenet_hpo:*`.  Studies made before kept these
    as user attributes, which are read then.  ({} for a study that does not exist.)"""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return {}
    system = storage.get_study_system_attrs(study_id)
    full = {k.removeprefix(RECORD): v for k, v in system.items() if k.startswith(RECORD)}
    return full or dict(storage.get_study_user_attrs(study_id))


def write_record(storage: optuna.storages.BaseStorage, name: str, key: str, value: Any) -> None:
    """Record `value` in full as the study system attribute lenet_hpo:`key` (user attributes
    stay short: `optuna studies` prints them all)."""
    storage.set_study_system_attr(storage.get_study_id_from_name(name), RECORD + key, value)


@dataclass(frozen=True)
class StoredStudy:
    """A study in its storage, with what lenet-hpo recorded of it."""

    study: optuna.Study
    record: dict[str, Any]
    url: str = ""  # its storage
    study_id: int | None = None  # its id in that storage

    @property
    def identity(self) -> dict[str, Any]:
        """What makes this study this one, whatever its name shares with others: its storage
        (an SQLite file by its absolute path, no password), name, id there and study file."""
        return {
            "storage": storage_identity(self.url),
            "study": self.study.study_name,
            "study_id": self.study_id,
            "study_file_sha256": hashlib.sha256(str(self.record.get("study_file", "")).encode()).hexdigest(),
        }

    @property
    def key(self) -> str:
        """A short digest of `identity`: the folder of this study's outputs."""
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]

    def check_outputs(self, recorded: dict[str, Any] | None, what: Path) -> None:
        """Refuse outputs (`what`) recorded for another study than this one, saying what differs."""
        if recorded == self.identity:
            return
        if recorded is None:
            raise StudyError(f"{what} does not say which study it came from (made by an older lenet-hpo);"
                             f" run `python -m lenet_hpo retrain-best --study {self.study.study_name}` again")
        here = self.identity
        differ = [f"{k} {recorded.get(k)!r} there, {v!r} here" for k, v in here.items() if recorded.get(k) != v]
        raise StudyError(f"{what} came from another study ({'; '.join(differ)}); run retrain-best for this one")

    def spec(self) -> StudySpec:
        """The study's own definition, as recorded when it was created."""
        text = self.record.get("study_file")
        if not text:
            raise StudyError(f"study {self.study.study_name!r} was not created by lenet-hpo (no study file recorded)")
        base = Path(self.record.get("study_dir", "."))  # a folder dataset's relative path starts there
        return parse_spec(tomllib.loads(text), name=self.study.study_name, text=text, base=base)


def open_study(study_name: str, url: str) -> StoredStudy:
    """Load an existing study; a clear error lists the studies that do exist."""
    storage = open_storage(url, heartbeat=None, create=False)
    names = study_names(storage)
    if study_name not in names:
        raise StudyError(f"no study {study_name!r} in {mask_url(url)} (studies there: {', '.join(names) or 'none'})")
    study = optuna.load_study(study_name=study_name, storage=storage)
    return StoredStudy(study, study_record(storage, study_name), url, storage.get_study_id_from_name(study_name))


def is_baseline(trial: optuna.Trial | FrozenTrial) -> bool:
    """Whether `trial` is the study's enqueued baseline (`BASELINE`)."""
    return trial.user_attrs.get(ROLE) == BASELINE_ROLE


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def best_trials(study: optuna.Study, k: int = 1) -> list[FrozenTrial]:
    """The k best COMPLETE trials by validation accuracy (the enqueued baseline is the reference,
    not a candidate); a clear error when there are none."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    trials = [t for t in complete if not is_baseline(t)]
    if not trials:
        counts = count_states(study)
        raise StudyError(
            f"study {study.study_name!r} has no completed trial ({counts[TrialState.PRUNED]} pruned,"
            f" {counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running); run"
            f" `python -m lenet_hpo search --study {study.study_name}` until one completes"
        )
    return sorted(trials, key=lambda t: (-t.values[0], t.number))[:k]


def retrain_dir(stored: StoredStudy, studies_dir: Path | None = None) -> Path:
    """Where `retrain-best` keeps a study's final runs: studies/<name>/<key>/retrain/, so two
    studies of one name (on two storages, or made again) never share or mix them."""
    return (studies_dir or default_studies_dir()) / check_name(stored.study.study_name) / stored.key / "retrain"


def search_values(study: optuna.Study) -> tuple[list[tuple[int, float, bool]], float | None]:
    """What each finished trial of a single-objective study reached, for the search-budget
    curve: [(number, value, pruned)] in trial order, and the baseline trial's value.

    A COMPLETE trial's value is its validation accuracy after the full budget.  A PRUNED
    trial enters with the last value it reported, a lower bound of what it would have
    reached (from a point inside an epoch, measured on the study's validation subset); one
    that reported nothing (diverged in its first epoch) is left out, as are FAIL trials and
    the enqueued baseline, the reference rather than a draw."""
    rows, baseline = [], None
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if is_baseline(t):
            baseline = t.values[0] if t.state == TrialState.COMPLETE else baseline
        elif t.state == TrialState.COMPLETE:
            rows.append((t.number, float(t.values[0]), False))
        elif t.state == TrialState.PRUNED and t.last_step is not None:
            rows.append((t.number, float(t.intermediate_values[t.last_step]), True))
    return rows, baseline
