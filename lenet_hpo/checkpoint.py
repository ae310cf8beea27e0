"""Checkpoints: weights beside the config and data description that rebuild them.

Everything stored is a tensor or a plain Python value, so a checkpoint loads
with `torch.load(..., weights_only=True)`; we never load one any other way.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lenet_hpo.config import TrialConfig
from lenet_hpo.errors import CheckpointError
from lenet_hpo.files import atomic_torch_save
from lenet_hpo.model import build_model

FORMAT = 1


@dataclass(frozen=True, eq=False)
class Checkpoint:
    model: nn.Module
    config: TrialConfig
    data: dict[str, Any]  # Dataset.meta(): dataset, classes, channels, resize, mean, std, ...
    extra: dict[str, Any]  # history, test accuracy, seed, ...


def save_checkpoint(
    path: str | Path, model: nn.Module, config: TrialConfig, data: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {"format": FORMAT, "config": config.to_dict(), "data": data, "extra": extra or {}, "state_dict": state}, path
    )
    return path


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and rebuild a model; refuses anything that is not a plain checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's advice to load with weights_only=False is exactly what must not be done with such a file.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "weights_only" not in line]
        detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else type(exc).__name__)
        if "global" not in detail.lower():
            raise CheckpointError(f"{path}: not a readable checkpoint ({detail})") from None
        raise CheckpointError(
            f"{path}: refused: the file carries Python objects that are not plain weights"
            f" ({detail}). Only load checkpoints written by lenet-hpo."
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise CheckpointError(f"{path}: not a lenet-hpo checkpoint (format {FORMAT} expected)")
    try:
        config = TrialConfig.from_dict(blob["config"])
        data = blob["data"]
        model = build_model(config, in_channels=int(data["channels"]), num_classes=len(data["classes"]))
        model.load_state_dict(blob["state_dict"])
    except (KeyError, ValueError, RuntimeError) as exc:  # ValueError: ConfigError among others
        raise CheckpointError(f"{path}: checkpoint does not rebuild ({exc})") from None
    model.to(device).eval()
    return Checkpoint(model=model, config=config, data=data, extra=blob.get("extra", {}))
