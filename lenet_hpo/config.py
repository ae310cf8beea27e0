"""`TrialConfig`: the one object that describes a LeNet-5 and how it is trained.

Search, retrain, baseline, checkpoints and the report all pass this frozen value
around.  It validates itself on construction, so an invalid model can never be
built or trained, and it round-trips through JSON so a checkpoint or a trial can
always be rebuilt from text.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lenet_hpo.errors import ConfigError

ARCHITECTURES = ("modern", "classic")
ACTIVATIONS = ("tanh", "relu", "leaky_relu", "gelu", "sigmoid", "scaled_tanh")
POOLINGS = ("avg", "max", "subsample")  # subsample: the paper's trainable S2/S4, squashed
INITS = ("default", "xavier", "kaiming", "lecun", "paper")  # paper: uniform +-2.4/fan_in
HEADS = ("linear", "rbf")  # rbf: the paper's Euclidean RBF units on fixed 7x12 digit bitmaps
LOSSES = ("cross_entropy", "map")  # map: the paper's Eq. 9 (cross-entropy with a rubbish logit -j)
INPUT_NORMS = ("standard", "paper")  # standard: mean/std of the fit split; paper: [-0.1, 1.175]
OPTIMIZERS = ("sgd", "adam", "adamw", "sdlm")  # sdlm: stochastic diagonal Levenberg-Marquardt
# sdlm's h_kk: the paper's layer-by-layer diagonal back-propagation, or an unbiased
# estimate of the exact Gauss-Newton diagonal (see sdlm.py)
SDLM_CURVATURES = ("paper", "gauss_newton")
# paper: the 20-pass rate table; paper_warmup: the same with pass 1 at a fifth of it (docs/classic.md)
SCHEDULES = ("constant", "cosine", "step", "onecycle", "paper", "paper_warmup")
KERNEL_SIZES = (3, 5)
# How a run computes (not part of a TrialConfig: it changes the arithmetic, not the
# model or recipe): fp32; bf16, forward passes under bfloat16 autocast; auto, bf16 on
# a CPU with native bfloat16 and fp32 elsewhere (train.resolve_precision).
PRECISIONS = ("auto", "fp32", "bf16")
RBF_INPUTS = 84  # one F6 unit per pixel of a 7x12 bitmap

# What architecture = "classic" fixes: LeCun, Bottou, Bengio, Haffner (1998), section II.B
# (the parts themselves are in classic.py).
CLASSIC_PARTS: dict[str, Any] = {
    "c1": 6,
    "c3": 16,
    "kernel_size": 5,
    "f5": 120,
    "f6": RBF_INPUTS,
    "activation": "scaled_tanh",
    "pooling": "subsample",
    "dropout": 0.0,
    "batch_norm": False,
    "init": "paper",
    "c3_table": True,
    "head": "rbf",
    "input_norm": "paper",
}


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """Architecture, optimisation and seed of one training run.

    Units are given where they matter: `lr` is the peak learning rate per step
    (not scaled by batch size); `epochs` are full passes over the fit split.
    """

    # --- architecture -------------------------------------------------------
    # "classic" asserts the paper's network exactly (every part below at its CLASSIC_PARTS
    # value, checked); "modern" is the free family, where each classic part is a switch.
    architecture: str = "modern"
    c1: int = 6  # feature maps of the first convolution (C1)
    c3: int = 16  # feature maps of the second convolution (C3)
    kernel_size: int = 5  # square kernel of C1 and C3
    f5: int = 120  # width of the first fully connected layer (C5/F5)
    f6: int = 84  # width of the second fully connected layer (F6)
    activation: str = "tanh"
    pooling: str = "avg"  # 2x2, stride 2
    dropout: float = 0.0  # after F5 and F6; 0 disables
    batch_norm: bool = False  # after each convolution
    init: str = "default"  # weight init: framework default, xavier, kaiming, lecun (uniform), paper
    c3_table: bool = False  # C3 reads S2 through the paper's Table I (needs c1 = 6, c3 = 16)
    head: str = "linear"  # output layer: linear logits, or rbf (logits = -penalties; needs f6 = 84)
    input_norm: str = "standard"  # input scaling the trainer applies
    # --- optimisation -------------------------------------------------------
    loss: str = "cross_entropy"
    map_j: float = 0.1  # the constant j of the MAP loss (loss "map" only)
    optimizer: str = "sgd"
    lr: float = 0.01  # for sdlm: the global rate eta of one update (see sdlm.py)
    sdlm_mu: float = 0.02  # sdlm: per-parameter rate eta / (mu + h_kk)
    sdlm_samples: int = 500  # sdlm: patterns h_kk is estimated on, each pass
    sdlm_curvature: str = "gauss_newton"  # sdlm: how h_kk is estimated (SDLM_CURVATURES)
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only, needs momentum > 0
    weight_decay: float = 0.0  # L2 for SGD/Adam, decoupled for AdamW
    batch_size: int = 64
    epochs: int = 20
    schedule: str = "constant"  # per-step cosine/onecycle, step = x0.1 at 50% and 75%
    augment: int = 0  # random translation of each training image by up to this many pixels; 0 = off
    seed: int = 0  # weight init, dropout, batch order and augmentation

    def __post_init__(self) -> None:
        _check_choice(self, "architecture", ARCHITECTURES)
        _check_int(self, "c1", 1, 512)
        _check_int(self, "c3", 1, 512)
        _check_choice(self, "kernel_size", KERNEL_SIZES)
        _check_int(self, "f5", 1, 8192)
        _check_int(self, "f6", 1, 8192)
        _check_choice(self, "activation", ACTIVATIONS)
        _check_choice(self, "pooling", POOLINGS)
        _check_float(self, "dropout", 0.0, 0.95)
        _check_bool(self, "batch_norm")
        _check_choice(self, "init", INITS)
        _check_bool(self, "c3_table")
        _check_choice(self, "head", HEADS)
        _check_choice(self, "input_norm", INPUT_NORMS)
        _check_choice(self, "loss", LOSSES)
        _check_float(self, "map_j", 0.0, 100.0)
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_float(self, "lr", 1e-7, 10.0)
        _check_float(self, "sdlm_mu", 1e-6, 100.0)
        _check_int(self, "sdlm_samples", 1, 100_000)
        _check_choice(self, "sdlm_curvature", SDLM_CURVATURES)
        _check_float(self, "momentum", 0.0, 0.999)
        _check_bool(self, "nesterov")
        _check_float(self, "weight_decay", 0.0, 1.0)
        _check_int(self, "batch_size", 1, 65536)
        _check_int(self, "epochs", 1, 1000)
        _check_choice(self, "schedule", SCHEDULES)
        _check_int(self, "augment", 0, 4)
        _check_int(self, "seed", 0, 2**63 - 1)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ConfigError("nesterov: needs optimizer 'sgd' with momentum > 0")
        if self.c3_table and (self.c1, self.c3, self.kernel_size) != (6, 16, 5):
            raise ConfigError(
                f"c3_table: the paper's Table I connects 6 S2 maps to 16 C3 maps with 5x5 kernels;"
                f" needs c1 = 6, c3 = 16, kernel_size = 5 (got {self.c1}, {self.c3}, {self.kernel_size})"
            )
        if self.optimizer == "sdlm" and self.sdlm_curvature == "paper" and (self.batch_norm or self.pooling == "max"):
            raise ConfigError(
                "sdlm_curvature: 'paper' back-propagates second derivatives through the paper's layers only;"
                " with batch_norm or max pooling use sdlm_curvature = 'gauss_newton'"
            )
        if self.head == "rbf" and self.f6 != RBF_INPUTS:
            raise ConfigError(f"head: 'rbf' compares F6 with 7x12 bitmaps; needs f6 = {RBF_INPUTS} (got {self.f6})")
        if self.architecture == "classic":
            for name, value in CLASSIC_PARTS.items():
                if getattr(self, name) != value:
                    raise ConfigError(
                        f"architecture: 'classic' is the paper's network exactly and needs {name} = {value!r}"
                        f" (got {getattr(self, name)!r}); use architecture 'modern' to mix classic and modern parts"
                    )

    # --- serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown config field (known: {', '.join(sorted(known))})")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TrialConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path) -> TrialConfig:
    """Read a `TrialConfig` from a JSON file; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror})") from None
    try:
        return TrialConfig.from_json(text)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


# --- validation helpers -------------------------------------------------------


def _value(cfg: TrialConfig, name: str) -> Any:
    return getattr(cfg, name)


def _check_int(cfg: TrialConfig, name: str, lo: int, hi: int) -> None:
    v = _value(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name}: expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{name}: {v} is out of range [{lo}, {hi}]")


def _check_float(cfg: TrialConfig, name: str, lo: float, hi: float) -> None:
    v = _value(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {v!r}")
    if not lo <= float(v) <= hi:  # also rejects NaN
        raise ConfigError(f"{name}: {v} is out of range [{lo}, {hi}]")
    # Normalise ints to floats so equal configs compare and serialise equally.
    object.__setattr__(cfg, name, float(v))


def _check_bool(cfg: TrialConfig, name: str) -> None:
    v = _value(cfg, name)
    if not isinstance(v, bool):
        raise ConfigError(f"{name}: expected true or false, got {v!r}")


def _check_choice(cfg: TrialConfig, name: str, choices: tuple[Any, ...]) -> None:
    v = _value(cfg, name)
    if v not in choices or isinstance(v, bool):
        raise ConfigError(f"{name}: {v!r} is not one of {', '.join(map(str, choices))}")


# The modern "classic" LeNet-5 of seed 000 part 1: tanh, average pooling, SGD with
# momentum, batch 64, 20 epochs.  61,706 parameters on 1x32x32 input.  (The paper's own
# network and recipe is `classic.CLASSIC`.)
BASELINE = TrialConfig()
