"""`train`: the one training function shared by search, retrain and baseline.

Data stays as whole tensors on the device: each epoch draws one seeded
permutation, and batches are contiguous slices of the permuted tensor (no
DataLoader, no per-sample Python work).  Evaluation runs in large batches under
inference mode.  Optuna stays out of here: the search passes `on_epoch` and
`on_point`, which may raise to stop the run (pruning).

The config chooses the input scaling (`input_norm`), the loss (`loss`: cross-entropy
or the paper's MAP criterion), the optimizer (including SDLM, whose curvature is
re-estimated at the start of each pass, in this loop) and the schedule.  Schedules
are defined over the whole run, so a run stopped early is one cut short, not one
trained with a shorter schedule.

`precision` is how the arithmetic runs, not what is trained: "fp32", or "bf16"
(forward passes under bfloat16 autocast; weights, gradients, optimizer state and
the loss stay float32), or "auto": bf16 on a CPU that computes bfloat16 natively
(AVX512-BF16 or AMX), fp32 elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lenet_hpo.classic import PAPER_RATES, map_logits, paper_rate
from lenet_hpo.config import PRECISIONS, TrialConfig
from lenet_hpo.data import Dataset, Split, input_affine, scale_input
from lenet_hpo.errors import ConfigError
from lenet_hpo.model import build_model, count_params
from lenet_hpo.sdlm import SDLM

# Images per evaluation batch.  On a GPU large batches keep the kernels busy; on a CPU
# smaller ones keep a layer's activations in cache (benchmarks/eval_batch.py).
EVAL_BATCH = {"cpu": 256}
EVAL_BATCH_DEFAULT = 1024
HELD_OUT = ("val", "test")  # what a run holds out and evaluates: the search's split, or the test split
NAN_CHECK_EVERY = 50  # steps between divergence checks (a check is a host sync on GPUs)


@dataclass(frozen=True)
class EpochStats:
    """One epoch of `train()`: its training loss and accuracy, and the held-out split's."""

    epoch: int  # 1-based
    train_loss: float  # the config's loss, mean over the epoch's samples, model in training mode
    train_acc: float  # fraction in [0, 1]
    eval_loss: float  # the config's loss on the evaluation split (`split`)
    eval_acc: float
    seconds: float  # wall time of the training steps, evaluation excluded
    lr: float  # learning rate at the end of the epoch
    split: str = "val"  # what was evaluated: "val" in a search ("val_subset": its fixed subset), "test" in a final run

    def to_dict(self) -> dict[str, float | str]:
        """Plain values under fixed keys; `split` says what eval_loss and eval_acc were measured on."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochStats:
        """From `to_dict`, or from a history kept before the keys were fixed (val_acc, test_acc, ...)."""
        if "eval_acc" not in d:
            split = next(k[: -len("_acc")] for k in d if k.endswith("_acc") and k != "train_acc")
            d = {**d, "split": split, "eval_acc": d[f"{split}_acc"], "eval_loss": d[f"{split}_loss"]}
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class PointStats:
    """An evaluation inside an epoch (sub-epoch fidelity)."""

    epoch: float  # position in epochs, e.g. 0.25
    images: int  # training images seen at the planned position: round(epoch * fit size)
    loss: float
    acc: float
    seconds: float  # training wall time since the run started, evaluation excluded


OnPoint = Callable[[PointStats], None]


@dataclass(frozen=True)
class Probe:
    """Reports inside epochs (sub-epoch fidelity): at the positions `at` (in epochs, e.g. 0.125)
    evaluate `split` (None: the evaluation split) and call `on_report`; with `epoch_ends`, the
    epoch ends before the last evaluate `split` too (their stats say split "val_subset")."""

    at: tuple[float, ...] = ()
    split: Split | None = None
    on_report: OnPoint | None = None
    epoch_ends: bool = False


@dataclass
class TrainResult:
    """What `train()` returns: the trained model, its per-epoch history and how it ended."""

    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    outcome: str = "completed"  # "completed" or "diverged" (NaN/inf loss)
    seconds: float = 0.0  # whole run, evaluation included
    params: int = 0
    precision: str = "fp32"  # what the run used: fp32 or bf16
    predicted: torch.Tensor | None = None  # the last evaluation's predicted class per image (CPU)

    @property
    def last(self) -> EpochStats | None:
        """The last epoch's stats (None: no epoch ran)."""
        return self.history[-1] if self.history else None


OnEpoch = Callable[[EpochStats], None]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`auto`/None picks cuda, then mps, then cpu; anything else is checked."""
    if isinstance(name, torch.device):
        return name
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not mps:
        raise ConfigError("device: mps was asked for but is not available; use --device cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ConfigError(f"device: {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a CPU with AVX512-BF16 or AMX.

    CUDA GPUs are left out on purpose: LeNet-sized steps there are bound by kernel
    launches, which autocast's casts only add to (not measured to help)."""
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(name: str, cfg: TrialConfig, device: torch.device, *, native: bool | None = None) -> str:
    """ "fp32" or "bf16" for `cfg` on `device`; "auto" picks bf16 where it is native
    (`native`: whether the device computes bfloat16 natively; detected when None).

    SDLM (the paper's recipe) always runs in fp32: its curvature estimate is float32 work."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision: {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        native = native_bf16(device) if native is None else native and device.type == "cpu"
        return "bf16" if native and cfg.optimizer != "sdlm" else "fp32"
    if name == "bf16":
        retry = "use precision fp32 or auto"
        if cfg.optimizer == "sdlm":
            raise ConfigError(f"precision: the SDLM optimizer (the paper's recipe) runs in fp32 only; {retry}")
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(
                f"precision: bf16 autocast is supported on cpu and cuda devices, not {device.type}; {retry}"
            )
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision: this CUDA GPU has no bfloat16; {retry}")
    return name


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """bfloat16 autocast for precision "bf16" (resolved); disabled for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def loss_logits(cfg: TrialConfig, logits: torch.Tensor) -> torch.Tensor:
    """The logits the loss takes a softmax over: the model's, plus -j for the MAP loss."""
    return map_logits(logits, cfg.map_j) if cfg.loss == "map" else logits


def make_loss(cfg: TrialConfig) -> Loss:
    """Mean loss over a batch; both choices are cross-entropy over `loss_logits`."""
    if cfg.loss not in ("cross_entropy", "map"):
        raise ConfigError(f"loss: unknown {cfg.loss!r}")
    return lambda logits, y: F.cross_entropy(loss_logits(cfg, logits), y)


def make_optimizer(cfg: TrialConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The config's optimizer.  SGD, Adam and AdamW use torch's fused kernels (one kernel
    for all parameters) on CPUs and CUDA GPUs: faster steps, measured in
    benchmarks/step_speed.py."""
    fused = {"fused": True} if params and params[0].device.type in ("cpu", "cuda") else {}
    decay = cfg.weight_decay
    match cfg.optimizer:
        case "sgd":
            return torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=decay, **fused
            )
        case "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=decay, **fused)
        case "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=decay, **fused)
        case "sdlm":
            return SDLM(params, lr=cfg.lr, mu=cfg.sdlm_mu, weight_decay=decay, curvature=cfg.sdlm_curvature)
    raise ConfigError(f"optimizer: unknown {cfg.optimizer!r}")


def make_schedule(
    cfg: TrialConfig, opt: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule over the whole run.  "paper" and "paper_warmup" scale `lr`
    per pass by the paper's table (lr = 0.0005 gives its rates exactly)."""
    total = max(total_steps, 1)
    per_epoch = max(total // cfg.epochs, 1)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR
    match cfg.schedule:
        case "constant":
            return lambda_lr(opt, lambda step: 1.0)
        case "cosine":
            return lambda_lr(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        case "step":
            return lambda_lr(opt, lambda step: 1.0 if step < 0.5 * total else 0.1 if step < 0.75 * total else 0.01)
        case "onecycle":
            cycle_momentum = "momentum" in opt.defaults or "betas" in opt.defaults
            return torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg.lr, total_steps=total + 1, cycle_momentum=cycle_momentum
            )
        case "paper" | "paper_warmup":
            first, warmup = PAPER_RATES[0][1], cfg.schedule == "paper_warmup"
            return lambda_lr(opt, lambda step: paper_rate(step // per_epoch + 1, warmup) / first)
    raise ConfigError(f"schedule: unknown {cfg.schedule!r}")


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each uint8 image by a random (dy, dx) in [-max_shift, max_shift]^2,
    filling with 0 (the blank background of the raw images).

    Whole-tensor work: images are grouped by their shift, one slice copy per group
    ((2s+1)^2 copies per epoch), never a Python loop over images.
    """
    s = max_shift
    n, _, h, w = x.shape
    side = 2 * s + 1
    padded = F.pad(x, (s, s, s, s))
    code = torch.randint(0, side * side, (n,), generator=generator).to(x.device)
    out = torch.empty_like(x)
    order = torch.argsort(code)
    counts = torch.bincount(code, minlength=side * side).tolist()
    start = 0
    for k, count in enumerate(counts):
        if count:
            idx = order[start : start + count]
            dy, dx = divmod(k, side)
            out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
            start += count
    return out


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int | None = None, precision: str = "fp32"
) -> torch.Tensor:
    """float32 logits for already-normalised inputs, in batches (default: EVAL_BATCH
    for the inputs' device); (N, classes).  precision "bf16" (resolved) runs the
    forward passes under bfloat16 autocast, as training did."""
    batch_size = batch_size or EVAL_BATCH.get(x.device.type, EVAL_BATCH_DEFAULT)
    was_training = model.training
    model.eval()
    try:
        with autocast(precision, x.device):
            return torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def evaluate_tensors(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = F.cross_entropy, *, precision: str = "fp32"
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, predicted class per input) on normalised inputs; cross-entropy
    unless `loss` is given."""
    logits = predict_logits(model, x, precision=precision)
    predicted = logits.argmax(1)
    return loss(logits, y).item(), (predicted == y).float().mean().item(), predicted


@dataclass
class _Run:
    """What one training run holds on its device."""

    cfg: TrialConfig
    dev: torch.device
    precision: str
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    criterion: Loss
    fit: Split  # uint8, scaled per batch by (x - shift) * scale
    shift: torch.Tensor
    scale: torch.Tensor
    evaluated: tuple[torch.Tensor, torch.Tensor]  # scaled evaluation inputs and labels
    point_set: tuple[torch.Tensor, torch.Tensor]  # what sub-epoch points evaluate
    points: dict[tuple[int, int], float]  # (epoch, step after which to evaluate) -> position in epochs


def _setup(cfg: TrialConfig, data: Dataset, dev: torch.device, precision: str, held_out: str, probe: Probe) -> _Run:
    # The fit split stays uint8 on the device (a quarter of float32's memory) and each
    # batch is scaled by the config's `input_norm` as it is sliced; the held-out split once.
    fit = (data.full_train() if held_out == "test" else data.train).to(dev)
    model = build_model(cfg, in_channels=data.channels, num_classes=data.num_classes).to(dev)
    # NHWC activations: faster convolutions on the CPU (oneDNN), fine on CUDA.
    model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, list(model.parameters()))
    n = len(fit)
    planned = {}
    for p in probe.at:
        whole = math.floor(p)
        if 0 < p < cfg.epochs and p != whole:
            planned[(whole + 1, math.ceil((p - whole) * n / cfg.batch_size) - 1)] = float(p)
    shift, scale = input_affine(cfg.input_norm, data.mean, data.std, dev)

    def scaled(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        return scale_input(split.x.to(dev), cfg.input_norm, data.mean, data.std), split.y.to(dev)

    evaluated = scaled(data.test if held_out == "test" else data.val)
    point_set = scaled(probe.split) if probe.split is not None else evaluated
    sched = make_schedule(cfg, opt, math.ceil(n / cfg.batch_size) * cfg.epochs)
    loss = make_loss(cfg)
    return _Run(cfg, dev, precision, model, opt, sched, loss, fit, shift, scale, evaluated, point_set, planned)


def _train_epoch(
    run: _Run, epoch: int, order: torch.Generator, probes: torch.Generator, on_point: OnPoint | None, before: float
) -> tuple[float, float, bool, float]:
    """One pass over the fit split: (mean loss, accuracy, diverged, training seconds)."""
    cfg, dev, model, opt = run.cfg, run.dev, run.model, run.opt
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    model.train()
    n = len(run.fit)
    perm = torch.randperm(n, generator=order).to(dev)
    xs, ys = run.fit.x[perm], run.fit.y[perm]
    if cfg.augment:
        xs = random_shift(xs, cfg.augment, order)
    if isinstance(opt, SDLM):  # h_kk for this pass, from its first patterns
        sample = (xs[: cfg.sdlm_samples].to(torch.float32) - run.shift) * run.scale
        opt.update_curvature(model, sample, lambda z: loss_logits(cfg, z), probes)
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    for step, i in enumerate(range(0, n, cfg.batch_size)):
        xb = (xs[i : i + cfg.batch_size].to(torch.float32) - run.shift) * run.scale
        yb = ys[i : i + cfg.batch_size]
        with autocast(run.precision, dev):
            logits = model(xb).float()
        loss = run.criterion(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.sched.step()
        loss_sum += loss.detach() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
        at = run.points.get((epoch, step))
        if (step % NAN_CHECK_EVERY == 0 or at is not None) and not torch.isfinite(loss):
            return math.nan, math.nan, True, time.perf_counter() - t0
        if at is not None and on_point is not None:
            paused = time.perf_counter()
            p_loss, p_acc, _ = evaluate_tensors(model, *run.point_set, run.criterion, precision=run.precision)
            on_point(PointStats(at, round(at * n), p_loss, p_acc, before + paused - t0))
            t0 += time.perf_counter() - paused  # evaluation is not training time
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return loss_sum.item() / n, correct.item() / n, False, time.perf_counter() - t0


def train(
    cfg: TrialConfig,
    data: Dataset,
    *,
    device: str | torch.device | None = None,
    on_epoch: OnEpoch | None = None,
    held_out: str = "val",
    precision: str = "fp32",
    probe: Probe = Probe(),
) -> TrainResult:
    """Train `cfg` on `data` and return the model and its per-epoch history.

    held_out="val" (search): fit on `data.train`, evaluate each epoch on `data.val`.
    held_out="test" (retrain-best, baseline): fit on train + val, evaluate on `data.test`.
    precision: "fp32", "bf16" or "auto" (see the module docstring and `resolve_precision`).
    probe: reports inside epochs (`Probe`); the last epoch always evaluates the whole
    evaluation split.
    """
    if held_out not in HELD_OUT:
        raise ValueError(f"held_out: {held_out!r} is not one of {', '.join(HELD_OUT)}")
    start = time.perf_counter()
    dev = resolve_device(device)
    prec = resolve_precision(precision, cfg, dev)
    run = _setup(cfg, data, dev, prec, held_out, probe)
    result = TrainResult(model=run.model, params=count_params(run.model), precision=prec)
    order = torch.Generator().manual_seed(cfg.seed)  # batch order and augmentation
    probes = torch.Generator().manual_seed(cfg.seed + 2)  # SDLM's curvature probes
    torch.manual_seed(cfg.seed + 1)  # dropout masks
    split, trained = held_out, 0.0
    for epoch in range(1, cfg.epochs + 1):
        train_loss, train_acc, diverged, seconds = _train_epoch(run, epoch, order, probes, probe.on_report, trained)
        trained += seconds
        lr = run.opt.param_groups[0]["lr"]
        if diverged or not math.isfinite(train_loss):
            result.outcome = "diverged"
            result.history.append(EpochStats(epoch, math.nan, math.nan, math.nan, math.nan, seconds, lr, split))
            break
        on_subset = probe.epoch_ends and probe.split is not None and epoch < cfg.epochs
        loss, acc, predicted = evaluate_tensors(
            run.model, *(run.point_set if on_subset else run.evaluated), run.criterion, precision=prec
        )
        if not on_subset:  # predictions are kept for the whole evaluation split only
            result.predicted = predicted.cpu()
        where = f"{split}_subset" if on_subset else split
        stats = EpochStats(epoch, train_loss, train_acc, loss, acc, seconds, lr, where)
        result.history.append(stats)
        result.seconds = time.perf_counter() - start
        if on_epoch is not None:
            on_epoch(stats)  # may raise (e.g. optuna.TrialPruned) to stop the run
    result.seconds = time.perf_counter() - start
    return result
