"""Reading a study file (`studies/<name>.toml`) into a checked `StudySpec`.

A study file:


    [study]
    dataset = "mnist"        # mnist, fashion-mnist, cifar10, synthetic
    val_size = 10000         # validation images held out of the official training set
    split_seed = 0
    train_limit = 0          # 0: all of the training part; N: a stratified subset (smoke runs)
    epochs = 4               # per-trial epoch budget
    retrain_epochs = 12      # retrain-best's runs (default: the first baseline's, 20 for BASELINE)
    report_at = [0.125, 0.5] # also validate inside epochs, at these positions (in epochs; then every epoch)
    val_subset = 2000        # validation images those points use (a fixed, stratified part; 0: all)
    val_subset_epochs = false  # true: epoch ends before the last validate on val_subset too
    train_seed = 0           # weight init and batch order of every trial (common random numbers)
    precision = "auto"       # fp32, bf16 (autocast), auto: bf16 on a CPU with native bfloat16, else fp32
    objectives = ["val_accuracy"]      # optionally a second: "params" or "macs" (minimised)

    [sampler]                # tpe (default), random, qmc, gp, nsgaii; other keys go to its constructor
    name = "tpe"
    seed = 0

    [pruner]                 # median (default), percentile, successive_halving, hyperband, threshold, none;
                             # other keys go to its constructor, resources and steps in epochs
                             # (min_resource, max_resource, n_warmup_steps, interval_steps; fractions allowed)
    name = "median"

    [fixed]                  # TrialConfig fields every trial shares; for a field searched with
    schedule = "cosine"      # `when`, the value of the trials where `when` does not hold

    [[start]]                # optional, repeatable: a configuration known to be good, tried first
    c1 = 12                  # (after the baseline); fields not given come from [fixed] and BASELINE

    [space]                  # TrialConfig fields to search, in suggestion order
    c1 = { low = 4, high = 16 }                        # int or float by the field's type
    lr = { low = 1e-4, high = 1e-1, log = true }
    activation = { choices = ["tanh", "relu"] }
    momentum = { low = 0.5, high = 0.99, when = { optimizer = "sgd" } }   # conditional
    weight_decay = { low = 1e-6, high = 1e-2, log = true, off = 0.0 }     # plus a <name>_on switch
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from lenet_hpo.acquire import DATASETS
from lenet_hpo.config import PRECISIONS
from lenet_hpo.data import RESIZE_MODES
from lenet_hpo.errors import ConfigError, StudyError
from lenet_hpo.files import installed_studies
from lenet_hpo.files import studies_dir as default_studies_dir
from lenet_hpo.folders import FolderOptions
from lenet_hpo.search.space import (
    FIELD_TYPES,
    OBJECTIVES,
    PRUNERS,
    RESOURCE_KEYS,
    SAMPLERS,
    Param,
    StudySpec,
    check_name,
)

_FOLDER_KEYS = {"channels", "test_size", "skip_bad"}
_STUDY_KEYS = _FOLDER_KEYS | {
    "retrain_epochs",
    "report_at",
    "val_subset",
    "val_subset_epochs",
    "name",
    "dataset",
    "val_size",
    "split_seed",
    "train_limit",
    "epochs",
    "train_seed",
    "precision",
    "objectives",
    "description",
    "resize",
}
_PARAM_KEYS = {"low", "high", "log", "step", "choices", "when", "off"}


def study_path(study: str, studies_dir: Path | None = None) -> Path:
    """`mnist` -> studies/mnist.toml (where there is no such file and no `studies_dir` was
    given: the one installed with the package, if any); a path to a .toml file as is."""
    if study.endswith(".toml"):
        return Path(study)
    check_name(study)
    path = (studies_dir or default_studies_dir()) / f"{study}.toml"
    installed = installed_studies() / path.name
    return installed if studies_dir is None and not path.exists() and installed.is_file() else path


def study_name(study: str) -> str:
    """The study's name, from a name or a path to its .toml file (checked either way)."""
    return check_name(study_path(study).stem)


def available_studies(studies_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (studies_dir or default_studies_dir()).glob("*.toml"))


def load_spec(study: str, studies_dir: Path | None = None) -> StudySpec:
    """Read and check a study file: a name (studies/<name>.toml) or a path to a .toml file."""
    path = study_path(study, studies_dir)
    if not path.is_file():
        known = ", ".join(available_studies(path.parent)) or "none"
        raise StudyError(f"no study file {path} (studies there: {known})")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML ({exc})") from None
    try:
        return parse_spec(raw, name=path.stem, path=path, text=text)
    except (StudyError, ValueError) as exc:
        raise StudyError(f"{path}: {exc}") from None


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise StudyError(msg)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_sampler(spec: StudySpec) -> None:
    """Build the sampler once now, so a bad option or seed fails when the file is read."""
    seed = spec.sampler.get("seed", 0)
    _require(_count(seed), f"sampler.seed: expected a non-negative integer, got {seed!r}")
    try:
        spec.make_sampler(0)
    except (TypeError, ValueError) as exc:
        raise StudyError(f"sampler: {exc} (the other keys of [sampler] go to its constructor)") from None


def _check_start(spec: StudySpec) -> None:
    """Every [[start]] configuration is a point of the space."""
    for i, fields_ in enumerate(spec.start, 1):
        for key in fields_:
            _require(key in FIELD_TYPES and key not in ("epochs", "seed"),
                     f"start {i}: unknown key {key!r} (TrialConfig fields other than epochs and seed)")
        try:
            params = spec.start_params(i - 1)
        except (ConfigError, TypeError, ValueError) as exc:
            raise StudyError(f"start {i}: {exc}") from None
        _require(params is not None, f"start {i}: {fields_} is not a point of [space] (with [fixed] for the rest)")


def _check_pruner(spec: StudySpec) -> None:
    """Build the pruner once now, so a bad option fails when the file is read."""
    extra = sorted(set(spec.pruner) - {"name"})
    _require(
        spec.pruner.get("name") != "none" or not extra,
        f"pruner.{extra[0] if extra else ''}: pruner \"none\" takes no options; remove it or name a pruner",
    )
    for key in RESOURCE_KEYS & set(spec.pruner):
        v = spec.pruner[key]
        _require(_number(v) and v > 0, f"pruner.{key}: {v!r} must be a positive number of epochs")
    try:
        spec.make_pruner(fit_size=50_000, check_images=5_000)
    except (TypeError, ValueError) as exc:
        raise StudyError(f"pruner: {exc}") from None


def _parse_dataset(study: dict[str, Any], base: Path) -> dict[str, Any]:
    """study.dataset (a built-in name, or a folder relative to the study file) and its options."""
    dataset = study.get("dataset", "mnist")
    _require(isinstance(dataset, str) and dataset != "", f"study.dataset: {dataset!r} is not a name or a folder")
    folder_keys = sorted(_FOLDER_KEYS & set(study))
    if dataset in DATASETS:
        _require(not folder_keys, f"study.{folder_keys[0] if folder_keys else ''}: only for a folder dataset")
        return {"dataset": dataset, "base": base}
    where = (base / dataset).expanduser()
    _require(
        where.is_dir(),
        f"study.dataset: {dataset!r} is not a built-in dataset ({', '.join(DATASETS)}) and {where} is not a folder",
    )
    channels, test_size = study.get("channels"), study.get("test_size", 0.2)
    _require(channels in (None, 1, 3), f"study.channels: {channels!r} must be 1 or 3")
    _require(_number(test_size) and 0 < test_size < 1, f"study.test_size: {test_size!r} must be a fraction in (0, 1)")
    skip_bad = study.get("skip_bad", False)
    _require(isinstance(skip_bad, bool), f"study.skip_bad: expected true or false, got {skip_bad!r}")
    try:
        options = FolderOptions(channels, study.get("resize", "pad"), float(test_size), skip_bad)
    except ConfigError as exc:
        raise StudyError(f"study.{exc}") from None
    return {"dataset": dataset, "base": base, "folder": options}


def _parse_study_table(study: dict[str, Any], name: str, base: Path) -> dict[str, Any]:
    """The [study] table, checked: StudySpec's keyword arguments from it."""
    bad = sorted(set(study) - _STUDY_KEYS)
    _require(not bad, f"unknown key study.{bad[0]} (known: {', '.join(sorted(_STUDY_KEYS))})" if bad else "")
    val_size = study.get("val_size")
    _require(
        val_size is None or (_number(val_size) and (0 < val_size < 1 or (val_size >= 1 and val_size == int(val_size)))),
        f"study.val_size: {val_size!r} must be a number of images or a fraction between 0 and 1",
    )
    for key in ("split_seed", "train_limit", "epochs", "train_seed", "retrain_epochs"):
        v = study.get(key)
        _require(v is None or _count(v), f"study.{key}: expected a non-negative integer, got {v!r}")
    epochs = study.get("epochs", 4)
    _require(epochs >= 1, "study.epochs: must be at least 1")
    precision = study.get("precision", "auto")
    _require(precision in PRECISIONS, f"study.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    objectives = tuple(study.get("objectives", ["val_accuracy"]))
    _require(
        objectives[:1] == ("val_accuracy",) and len(objectives) <= 2 and set(objectives) <= set(OBJECTIVES),
        f"study.objectives: {list(objectives)} must be ['val_accuracy'] or ['val_accuracy', 'params' or 'macs']",
    )
    resize = study.get("resize", "pad")
    _require(resize in RESIZE_MODES, f"study.resize: {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    report_at = study.get("report_at", [])
    _require(
        isinstance(report_at, list) and all(_number(v) and 0 < v < epochs for v in report_at),
        f"study.report_at: {report_at!r} must be a list of positions in epochs between 0 and {epochs}",
    )
    val_subset = study.get("val_subset", 0)
    _require(_count(val_subset), f"study.val_subset: expected a non-negative integer, got {val_subset!r}")
    subset_epochs = study.get("val_subset_epochs", False)
    _require(isinstance(subset_epochs, bool), f"study.val_subset_epochs: expected true or false, got {subset_epochs!r}")
    _require(
        not subset_epochs or val_subset > 0,
        "study.val_subset_epochs = true needs study.val_subset > 0 (the images those epoch ends validate on)",
    )
    return {
        "report_at": tuple(float(v) for v in report_at),
        "val_subset": val_subset,
        "val_subset_epochs": subset_epochs,
        **_parse_dataset(study, base),
        "name": check_name(str(study.get("name", name))),
        "val_size": val_size,
        "split_seed": study.get("split_seed", 0),
        "train_limit": study.get("train_limit") or None,
        "resize": resize,
        "epochs": epochs,
        "train_seed": study.get("train_seed", 0),
        "retrain_epochs": study.get("retrain_epochs") or None,
        "precision": precision,
        "objectives": objectives,
        "description": str(study.get("description", "")),
    }


def _check_space(spec: StudySpec) -> None:
    """Conditions refer to earlier fields, and every corner of the space is a valid config
    (checked now, not mid-search)."""
    seen: set[str] = set()
    for p in spec.params:
        for k in p.when:
            _require(k in seen, f"space.{p.name}.when: {k!r} must be a field searched before {p.name}")
        _require(
            p.name not in spec.fixed or bool(p.when),
            f"fixed.{p.name}: {p.name} is also searched in every trial; remove it from [fixed] or from"
            f" [space] (a fixed value of a searched field is for trials where its `when` does not hold)",
        )
        seen.add(p.name)
    try:
        spec.base_config()
        for p in spec.params:
            for v in p.choices if p.kind == "categorical" else (p.low, p.high):
                spec.base_config().replace(**{p.name: v})
    except ValueError as exc:
        raise StudyError(f"space: {exc}") from None


def parse_spec(
    raw: dict[str, Any], *, name: str, path: Path | None = None, text: str = "", base: Path | None = None
) -> StudySpec:
    """A study file's contents, checked.  A folder dataset's relative path is relative to `base`
    (default: the study file's folder, else the working directory)."""
    tables = ("study", "sampler", "pruner", "fixed", "space", "start")
    unknown = sorted(set(raw) - set(tables))
    _require(not unknown, f"unknown table [{unknown[0]}] (known: {', '.join(tables)})" if unknown else "")
    base = base if base is not None else (path.parent if path is not None else Path())
    study = _parse_study_table(dict(raw.get("study", {})), name, base.resolve())
    sampler = dict(raw.get("sampler", {"name": "tpe"}))
    _require(
        sampler.get("name", "tpe") in SAMPLERS,
        f"sampler.name: {sampler.get('name')!r} is not one of {', '.join(SAMPLERS)}",
    )
    pruner = dict(raw.get("pruner", {"name": "median"}))
    _require(
        pruner.get("name", "median") in PRUNERS,
        f"pruner.name: {pruner.get('name')!r} is not one of {', '.join(PRUNERS)}",
    )
    fixed = dict(raw.get("fixed", {}))
    for key in fixed:
        _require(
            key in FIELD_TYPES and key not in ("epochs", "seed"),
            f"unknown key fixed.{key} (a TrialConfig field other than epochs and seed; set those in [study])",
        )
    params = tuple(_parse_param(k, v) for k, v in raw.get("space", {}).items())
    start = raw.get("start", [])
    _require(isinstance(start, list) and all(isinstance(s, dict) for s in start),
             "start: write each starting configuration as a [[start]] table of TrialConfig fields")
    spec = StudySpec(path=path, text=text, sampler=sampler, pruner=pruner, fixed=fixed, params=params,
                     start=tuple(dict(s) for s in start), **study)
    _check_space(spec)
    _check_start(spec)
    _check_sampler(spec)
    _check_pruner(spec)
    if spec.multi_objective:
        _require(
            pruner.get("name", "median") == "none",
            'pruner: Optuna cannot prune multi-objective studies; set [pruner] name = "none"',
        )
    return spec


def _parse_param(name: str, raw: Any) -> Param:
    _require(
        name in FIELD_TYPES and name not in ("epochs", "seed"),
        f"unknown key space.{name} (search TrialConfig fields:"
        f" {', '.join(k for k in FIELD_TYPES if k not in ('epochs', 'seed'))})",
    )
    _require(
        isinstance(raw, dict), f"space.{name}: expected a table like {{ low = 1, high = 8 }} or {{ choices = [...] }}"
    )
    bad = sorted(set(raw) - _PARAM_KEYS)
    _require(not bad, f"unknown key space.{name}.{bad[0]} (known: {', '.join(sorted(_PARAM_KEYS))})" if bad else "")
    when = raw.get("when", {})
    _require(isinstance(when, dict), f"space.{name}.when: expected a table of field = value")
    if "choices" in raw:
        choices = raw["choices"]
        _require(isinstance(choices, list) and len(choices) > 0, f"space.{name}.choices: expected a non-empty list")
        _require(
            not ({"low", "high", "log", "step", "off"} & set(raw)),
            f"space.{name}: choices cannot be combined with low/high/log/step/off",
        )
        return Param(name, "categorical", choices=tuple(choices), when=dict(when))
    _require("low" in raw and "high" in raw, f"space.{name}: needs low and high, or choices")
    kind = FIELD_TYPES[name]
    _require(kind in ("int", "float"), f"space.{name}: a {kind} field takes choices, not low/high")
    low, high = raw["low"], raw["high"]
    for key, v in (("low", low), ("high", high)):
        _require(
            isinstance(v, (int, float)) and not isinstance(v, bool), f"space.{name}.{key}: expected a number, got {v!r}"
        )
        _require(kind == "float" or isinstance(v, int), f"space.{name}.{key}: {name} is an integer field, got {v!r}")
    _require(low <= high, f"space.{name}: low {low} is above high {high}")
    log = raw.get("log", False)
    _require(isinstance(log, bool), f"space.{name}.log: expected true or false")
    _require(not log or low > 0, f"space.{name}: a log range needs low > 0")
    step = raw.get("step")
    _require(
        step is None or (isinstance(step, (int, float)) and step > 0 and not log),
        f"space.{name}.step: expected a positive number (not with log)",
    )
    return Param(name, kind, low=low, high=high, log=log, step=step, when=dict(when), off=raw.get("off"))
