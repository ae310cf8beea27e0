"""Final models: train a config on the full training set, test it, keep it.

`train` and `retrain-best` both end here.  `train_final` fits train + validation,
evaluates on the official test split, and saves a checkpoint (weights, config, data
description, per-epoch history and the run's summary) with the test predictions beside
it (`<checkpoint>.predictions.csv.gz`: one row per test image, `image,label,predicted`,
readable with `pandas.read_csv`).  A run whose checkpoint is already there for the same
config, data and precision is reused instead of trained again.

Runs of the named configs (the baselines) are also kept in a cache shared by every
study (`RunCache`), keyed by everything that decides their result, so comparing a
second study with the baseline trains only the tuned model.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lenet_hpo import classic, config, data, model, sdlm, training
from lenet_hpo.checkpoint import load_checkpoint, save_checkpoint
from lenet_hpo.classic import CLASSIC
from lenet_hpo.config import BASELINE, TrialConfig, load_config
from lenet_hpo.data import Dataset, scale_input
from lenet_hpo.errors import CheckpointError, ConfigError
from lenet_hpo.files import atomic_write_bytes, cache_dir
from lenet_hpo.model import count_macs
from lenet_hpo.training import OnEpoch, predict_logits, resolve_device, resolve_precision

log = logging.getLogger(__name__)
NAMED_CONFIGS: dict[str, TrialConfig] = {"baseline": BASELINE, "classic": CLASSIC}
PREDICTIONS_SUFFIX = ".predictions.csv.gz"


def named_config(name: str) -> TrialConfig:
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        raise ConfigError(
            f"config: unknown name {name!r} (named configs: {', '.join(NAMED_CONFIGS)}; or give a path to a .json file)"
        ) from None


def config_named_or_file(text: str) -> tuple[str, TrialConfig]:
    """(name for file names, config) from a named config or a TrialConfig .json file."""
    if text in NAMED_CONFIGS:
        return text, NAMED_CONFIGS[text]
    return Path(text).stem, load_config(text)


@dataclass(frozen=True)
class FinalRun:
    """One final run (`train_final`): a config on one seed, fitted on train + validation and tested."""

    role: str  # "best", a named config ("baseline", "classic") or a config file's name
    seed: int
    test_accuracy: float
    test_loss: float
    epochs: int
    seconds: float
    seconds_per_epoch: float
    params: int
    macs: int
    checkpoint: str
    outcome: str  # "completed" or "diverged"
    precision: str = "fp32"  # resolved: fp32 or bf16 (checkpoints from before this field were fp32)
    source: str = "trained"  # "trained" now, "reused" (its checkpoint was there) or "cached" (RunCache)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predictions_path(checkpoint: str | Path) -> Path:
    p = Path(checkpoint)
    return p.with_name(p.stem + PREDICTIONS_SUFFIX)


def write_predictions(path: Path, labels: torch.Tensor, predicted: torch.Tensor) -> None:
    frame = pd.DataFrame({"image": range(len(labels)), "label": labels.numpy(), "predicted": predicted.numpy()})
    atomic_write_bytes(path, gzip.compress(frame.to_csv(index=False).encode(), mtime=0))


def read_predictions(checkpoint: str | Path) -> pd.DataFrame | None:
    """The test predictions saved beside a checkpoint; None where there are none (runs from
    before predictions were kept)."""
    path = predictions_path(checkpoint)
    if not path.exists():
        return None
    try:
        return pd.read_csv(io.BytesIO(gzip.decompress(path.read_bytes())))
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
        log.warning("%s: unreadable predictions (%s)", path, exc)
        return None


def correctness(checkpoints: list[str]) -> np.ndarray | None:
    """(runs, test images) booleans: which test images each run classified right, from the
    predictions beside its checkpoint; None when any run has none (retrained before they were kept)."""
    rows = []
    for path in checkpoints:
        preds = read_predictions(path)
        if preds is None:
            return None
        rows.append((preds.predicted == preds.label).to_numpy())
    return np.stack(rows)


def _stored_run(path: Path, cfg: TrialConfig, dataset: Dataset, precision: str) -> FinalRun | None:
    """The run saved at `path` when it is this config on this data in this precision."""
    if not path.exists():
        return None
    try:
        ck = load_checkpoint(path)
        done = FinalRun(**{**ck.extra["run"], "checkpoint": str(path)})
    except (CheckpointError, KeyError, TypeError):
        log.warning("%s: unreadable or from another version; training again", path)
        return None
    if ck.config != cfg or ck.data.get("checksum") != dataset.checksum or done.precision != precision:
        return None
    if read_predictions(path) is None:  # kept before predictions were: recompute them from the weights
        x = scale_input(dataset.test.x, cfg.input_norm, dataset.mean, dataset.std)
        predicted = predict_logits(ck.model, x, precision=precision).argmax(1)
        write_predictions(predictions_path(path), dataset.test.y, predicted)
    return done


def train_final(
    cfg: TrialConfig,
    dataset: Dataset,
    path: Path,
    *,
    role: str,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    on_epoch: OnEpoch | None = None,
    meta: dict[str, Any] | None = None,
    cache: RunCache | None = None,
) -> FinalRun:
    """Train `cfg` on train + validation, test it, and save the checkpoint at `path`
    with its predictions; reuse what is already at `path`, or in `cache`, for the same run."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, cfg, dev)
    done = _stored_run(path, cfg, dataset, prec)
    if done is not None:
        log.info("%s: already done, reused", path)
        return replace(done, role=role, source="reused")
    key = cache.key(cfg, dataset, prec, dev) if cache is not None else None
    if cache is not None and key is not None and cache.restore(key, path):
        done = _stored_run(path, cfg, dataset, prec)
        if done is not None:
            return replace(done, role=role, source="cached")
    result = training.train(cfg, dataset, device=dev, on_epoch=on_epoch, held_out="test", precision=prec)
    history = [e.to_dict() for e in result.history]
    completed = result.outcome == "completed" and result.last is not None
    run = FinalRun(
        role=role,
        seed=cfg.seed,
        test_accuracy=result.last.eval_acc if completed and result.last else math.nan,
        test_loss=result.history[-1].eval_loss,
        epochs=len(history),
        seconds=result.seconds,
        seconds_per_epoch=statistics.fmean(e.seconds for e in result.history),
        params=result.params,
        macs=count_macs(result.model, dataset.channels),
        checkpoint=str(path),
        outcome=result.outcome,
        precision=result.precision,
    )
    save_checkpoint(path, result.model, cfg, dataset.meta(), {"history": history, "run": run.to_dict(), **(meta or {})})
    if completed and result.predicted is not None:
        write_predictions(predictions_path(path), dataset.test.y.cpu(), result.predicted)
        if cache is not None and key is not None:
            cache.store(key, path)
    return run


@functools.cache
def _code_digest() -> str:
    """SHA-256 of the modules whose code decides a training run's result."""
    h = hashlib.sha256()
    for module in (classic, config, data, model, sdlm, training):
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()


class RunCache:
    """Final runs of named configs, shared by every study and rerun (`<cache>/runs/<key>.pt`).

    The key is a SHA-256 of everything that decides a run's result: the config (seed and
    epochs included), the data's description (dataset checksum, split, resize, mean and
    std), the precision, the device type, torch's version and the training code itself.
    Any change of these misses and trains again.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else cache_dir() / "runs"

    def key(
        self,
        cfg: TrialConfig,
        dataset: Dataset,
        precision: str,
        device: torch.device,
        *,
        torch_version: str = torch.__version__,
        code: str | None = None,
    ) -> str:
        """`code` defaults to the digest of this installation's training code."""
        parts = {
            "config": cfg.to_dict(),
            "data": dataset.meta(),
            "precision": precision,
            "device": device.type,
            "torch": torch_version,
            "code": code if code is not None else _code_digest(),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _files(self, key: str) -> tuple[Path, Path]:
        ck = self.directory / f"{key}.pt"
        return ck, predictions_path(ck)

    def has(self, key: str) -> bool:
        """Whether run `key` is cached (checkpoint and predictions)."""
        return all(p.exists() for p in self._files(key))

    def restore(self, key: str, path: Path) -> bool:
        """Copy the cached run `key` to `path` (and its predictions); False when not cached."""
        if not self.has(key):
            return False
        ck, preds = self._files(key)
        atomic_write_bytes(path, ck.read_bytes())
        atomic_write_bytes(predictions_path(path), preds.read_bytes())
        return True

    def store(self, key: str, path: Path) -> None:
        ck, preds = self._files(key)
        try:
            atomic_write_bytes(preds, predictions_path(path).read_bytes())
            atomic_write_bytes(ck, path.read_bytes())
        except OSError as exc:  # a read-only cache costs a retraining next time, nothing else
            log.warning("could not cache %s in %s (%s)", path, self.directory, exc)
