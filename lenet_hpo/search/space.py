"""Study definitions (`studies/<name>.toml`) and the one mapping from a trial to a config.

`suggest_config(trial, spec)` is the only code that calls `trial.suggest_*`.
Retraining rebuilds a finished trial's config through the same function with
`optuna.trial.FixedTrial(params)`, so params and configs can never drift apart.

The study file's format is parsed in `studyfile.py`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from lenet_hpo.config import BASELINE, TrialConfig
from lenet_hpo.data import Dataset, load_data
from lenet_hpo.errors import StudyError, experimental_used_knowingly
from lenet_hpo.folders import FolderOptions
from lenet_hpo.search.pruning import NoisePruner

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
OBJECTIVES = ("val_accuracy", "params", "macs")
SAMPLERS = ("tpe", "random", "qmc", "gp", "nsgaii")
PRUNERS = ("median", "percentile", "noise", "successive_halving", "hyperband", "threshold", "none")
# Pruner options counted in steps; a study file gives them in epochs.
RESOURCE_KEYS = frozenset({"min_resource", "max_resource", "n_warmup_steps", "interval_steps"})

FIELD_TYPES = {f.name: f.type for f in fields(TrialConfig)}  # "int", "float", "str", "bool"


def check_name(name: str, what: str = "study") -> str:
    """Names become file names: no path separators, no `..`, nothing hidden."""
    if not NAME_RE.match(name) or ".." in name:
        raise StudyError(
            f"{what} name {name!r} is not allowed: use letters, digits, '-', '_' and '.' (no path separators or '..')"
        )
    return name


@dataclass(frozen=True)
class Param:
    name: str  # the TrialConfig field
    kind: str  # "int", "float" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, Any] = field(default_factory=dict)
    off: Any = None  # with `off`, a boolean `<name>_on` decides between `off` and the range

    def applies(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) == v for k, v in self.when.items())

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return False
        if self.step:
            k = (value - self.low) / self.step
            return math.isclose(k, round(k), abs_tol=1e-9)
        return True


@dataclass(frozen=True)
class StudySpec:
    """A study file, checked (`load_spec`): its data, budget, sampler, pruner and search space."""

    name: str
    path: Path | None
    text: str  # the file's contents, recorded in the study
    dataset: str = "mnist"  # a built-in dataset's name, or a folder: absolute, or relative to `base`
    base: Path = Path()  # the study file's folder
    folder: FolderOptions | None = None  # how a folder dataset is decoded (None: a built-in dataset)
    val_size: float | None = None  # images, or below 1 a fraction of the training part (load_data's default)
    split_seed: int = 0
    train_limit: int | None = None
    resize: str = "pad"
    epochs: int = 4
    train_seed: int = 0
    retrain_epochs: int | None = None  # retrain-best's epochs (None: the first baseline's)
    precision: str = "auto"  # how trials compute (train.PRECISIONS); each trial records what it used
    objectives: tuple[str, ...] = ("val_accuracy",)
    report_at: tuple[float, ...] = ()  # positions inside epochs (in epochs) where trials also report
    val_subset: int = 0  # validation images the points inside epochs use; 0: the whole split
    val_subset_epochs: bool = False  # epoch ends before the last validate on the subset too
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    fixed: dict[str, Any] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    start: tuple[dict[str, Any], ...] = ()  # [[start]]: configurations tried first, after the baseline
    description: str = ""

    @property
    def directions(self) -> list[str]:
        return ["maximize" if o == "val_accuracy" else "minimize" for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def dataset_location(self) -> str:
        """The built-in dataset's name, or the folder's absolute path."""
        return self.dataset if self.folder is None else str((self.base / self.dataset).expanduser().resolve())

    @property
    def dataset_name(self) -> str:
        """What the loaded dataset calls itself: the built-in name, or the folder's name."""
        return self.dataset if self.folder is None else Path(self.dataset_location).name

    def load_data(self, data_dir: Path | None = None) -> Dataset:
        """The study's dataset, split as the study says."""
        return load_data(
            self.dataset_location,
            data_dir=data_dir,
            val_size=self.val_size,
            split_seed=self.split_seed,
            resize=self.resize,
            train_limit=self.train_limit,
            folder=self.folder,
        )

    def base_config(self) -> TrialConfig:
        """What every trial shares before its searched values are applied."""
        return BASELINE.replace(**self.fixed, epochs=self.epochs, seed=self.train_seed)

    def start_params(self, i: int) -> dict[str, Any] | None:
        """The params of the i-th [[start]] configuration (None: it is no point of the space)."""
        return params_for(self.base_config().replace(**self.start[i]), self)

    @property
    def sampler_seed(self) -> int:
        """The study's seed: every trial's random draws derive from it and the trial's number."""
        return int(self.sampler.get("seed", 0) or 0)

    def make_sampler(self, seed: int | None) -> optuna.samplers.BaseSampler:
        """The study's sampler with its random draws seeded by `seed` (see `trial_seed`)."""
        opts = dict(self.sampler)
        name = opts.pop("name", "tpe")
        opts.pop("seed", None)
        match name:
            case "tpe":
                opts.setdefault("multivariate", True)
                opts.setdefault("group", True)  # conditional params (momentum only for SGD)
                opts.setdefault("constant_liar", True)  # parallel workers do not repeat each other
                with experimental_used_knowingly():  # multivariate, group, constant_liar
                    return optuna.samplers.TPESampler(seed=seed, **opts)
            case "random":
                return optuna.samplers.RandomSampler(seed=seed, **opts)
            case "qmc":  # its seed scrambles the whole sequence: one seed for the study, not per trial
                return optuna.samplers.QMCSampler(seed=self.sampler_seed, **opts)
            case "gp":
                return optuna.samplers.GPSampler(seed=seed, **opts)
            case "nsgaii":
                return optuna.samplers.NSGAIISampler(seed=seed, **opts)
        raise StudyError(f"sampler: unknown {name!r}")

    def report_points(self) -> tuple[float, ...]:
        """Positions inside epochs (in epochs) where a trial reports: `report_at`, and every rung
        of a successive-halving pruner that falls inside an epoch, so the pruner sees each rung."""
        points = set(self.report_at)
        if self.pruner.get("name") == "successive_halving" and "min_resource" in self.pruner:
            rung, factor = float(self.pruner["min_resource"]), int(self.pruner.get("reduction_factor", 4))
            rung *= factor ** int(self.pruner.get("min_early_stopping_rate", 0))
            while rung < self.epochs:
                points.add(rung)
                rung *= factor
        return tuple(sorted(p for p in points if 0 < p < self.epochs and p != int(p)))

    def check_images(self, val_images: int) -> int:
        """How many validation images a pruning check uses: the subset where there is one
        (the last epoch, never pruned, uses the whole split), else all `val_images`."""
        return min(self.val_subset, val_images) if self.val_subset else val_images

    def make_pruner(self, fit_size: int, check_images: int) -> optuna.pruners.BasePruner:
        """The study's pruner.  A trial's steps are training images seen (`fit_size` an epoch),
        so the file's resources in epochs become images (rounded down, so rungs never fall
        after the report that should meet them); `check_images` sets the noise pruner's
        standard errors (`check_images()`)."""
        opts = dict(self.pruner)
        name = opts.pop("name", "median")
        for key in RESOURCE_KEYS & set(opts):
            opts[key] = max(1, int(float(opts[key]) * fit_size))
        match name:
            case "median":  # below the median of the completed trials at the same step
                return optuna.pruners.MedianPruner(**opts)
            case "percentile":  # keeps the top `percentile` percent of the completed trials' values at each step
                return optuna.pruners.PercentilePruner(**opts)
            case "noise":  # ... and keeps a trial below them by less than z standard errors of its check
                return NoisePruner(images=check_images, **opts)
            case "successive_halving":  # asynchronous (ASHA): rungs at min_resource * reduction_factor^k
                return optuna.pruners.SuccessiveHalvingPruner(**opts)
            case "hyperband":
                opts.setdefault("min_resource", fit_size)
                opts.setdefault("max_resource", self.epochs * fit_size)
                return optuna.pruners.HyperbandPruner(**opts)
            case "threshold":  # e.g. lower = 0.5: drop anything under 50% after n_warmup_steps
                return optuna.pruners.ThresholdPruner(**opts)
            case "none":
                return optuna.pruners.NopPruner()
        raise StudyError(f"pruner: unknown {name!r}")


def trial_seed(study_seed: int, number: int) -> int:
    """The seed of trial `number`'s random draws: the same for the same study seed and trial
    number, whichever machine or process draws it, and different for every trial."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


def suggest_config(trial: optuna.Trial, spec: StudySpec) -> TrialConfig:
    """The only place that calls `trial.suggest_*`: sample a config from the space."""
    values: dict[str, Any] = {}
    for p in spec.params:
        if not p.applies(values):
            continue
        if p.off is not None and not trial.suggest_categorical(f"{p.name}_on", [False, True]):
            values[p.name] = p.off
            continue
        if p.kind == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))  # type: ignore[arg-type]
        else:
            values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log, step=p.step)  # type: ignore[arg-type]
    return spec.base_config().replace(**values)


def params_in_space(params: dict[str, Any], spec: StudySpec) -> tuple[dict[str, Any], list[str]]:
    """(the params that lie in `spec`'s space, the names of those that do not, with why) for a
    trial of another study: what a warm start can carry over."""
    by_name = {p.name: p for p in spec.params}
    switches = {f"{p.name}_on": p for p in spec.params if p.off is not None}
    kept, dropped = {}, []
    for name, value in params.items():
        if (name in switches and isinstance(value, bool)) or (name in by_name and by_name[name].contains(value)):
            kept[name] = value
        elif name in by_name or name in switches:
            dropped.append(f"{name}={value!r} (outside this space)")
        else:
            dropped.append(f"{name} (not searched here)")
    return kept, dropped


def config_from_params(params: dict[str, Any], spec: StudySpec) -> TrialConfig:
    """Rebuild a finished trial's config through the same mapping."""
    return suggest_config(optuna.trial.FixedTrial(params), spec)  # type: ignore[arg-type]


def params_for(cfg: TrialConfig, spec: StudySpec) -> dict[str, Any] | None:
    """The params that make `suggest_config` return `cfg` (epochs and seed aside), or
    None when `cfg` lies outside the space."""
    base = spec.base_config()
    searched = {p.name for p in spec.params}
    for f in fields(TrialConfig):  # base holds [fixed]: an unsearched fixed field must match it
        if (
            f.name not in searched
            and f.name not in ("epochs", "seed")
            and getattr(cfg, f.name) != getattr(base, f.name)
        ):
            return None
    values: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for p in spec.params:
        if not p.applies(values):
            if getattr(cfg, p.name) != getattr(base, p.name):
                return None
            continue
        v = getattr(cfg, p.name)
        values[p.name] = v
        if p.off is not None:
            params[f"{p.name}_on"] = v != p.off
            if v == p.off:
                continue
        if not p.contains(v):
            return None
        params[p.name] = v
    if config_from_params(params, spec).replace(epochs=cfg.epochs, seed=cfg.seed) != cfg:
        return None
    return params


