"""`train`: the one training function shared by search, retrain and baseline.

Data stays as whole tensors on the device: each epoch draws one seeded
permutation, and batches are contiguous slices of the permuted tensor (no
DataLoader, no per-sample Python work).  Evaluation runs in large batches under
inference mode.  Optuna stays out of here: the search passes `on_epoch`, which
may raise to stop the run (pruning).

The config chooses the input scaling (`input_norm`), the loss (`loss`: cross-entropy
or the paper's MAP criterion), the optimizer (including SDLM, whose curvature is
re-estimated at the start of each pass, in this loop) and the schedule.

`precision` is how the arithmetic runs, not what is trained: "fp32", or "bf16"
(forward passes under bfloat16 autocast; weights, gradients, optimizer state and
the loss stay float32), or "auto": bf16 on a CPU that computes bfloat16 natively
(AVX512-BF16 or AMX), fp32 elsewhere (benchmarks/step_speed.py measures the gain).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lenet_hpo.classic import map_logits
from lenet_hpo.config import PRECISIONS, TrialConfig
from lenet_hpo.data import Dataset, Split, input_affine, scale_input
from lenet_hpo.model import build_model, count_params
from lenet_hpo.sdlm import SDLM

# Images per evaluation batch.  On a GPU large batches keep the kernels busy; on a CPU
# smaller ones keep a layer's activations in cache (benchmarks/eval_batch.py).
EVAL_BATCH = {"cpu": 256}
EVAL_BATCH_DEFAULT = 1024
NAN_CHECK_EVERY = 50  # steps between divergence checks (a check is a host sync on GPUs)
# The paper's global rate per pass: (last pass, rate), passes counted from 1; later passes keep the last.
PAPER_RATES = ((2, 0.0005), (5, 0.0002), (8, 0.0001), (12, 0.00005), (20, 0.00001))
PAPER_WARMUP = 0.2  # schedule "paper_warmup": pass 1 at this fraction of the table's rate


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float  # the config's loss, mean over the epoch's samples, model in training mode
    train_acc: float  # fraction in [0, 1]
    val_loss: float  # the config's loss on the evaluation split (validation in a search, test in a final run)
    val_acc: float
    seconds: float  # wall time of the training steps, evaluation excluded
    lr: float  # learning rate at the end of the epoch

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    outcome: str = "completed"  # "completed" or "diverged" (NaN/inf loss)
    seconds: float = 0.0  # whole run, evaluation included
    params: int = 0
    precision: str = "fp32"  # what the run used: fp32 or bf16

    @property
    def final(self) -> EpochStats | None:
        return self.history[-1] if self.history else None

    @property
    def best_val_acc(self) -> float:
        return max((e.val_acc for e in self.history), default=float("nan"))


OnEpoch = Callable[[EpochStats], None]


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`auto`/None picks cuda, then mps, then cpu; anything else is checked."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device: mps was asked for but is not available; use --device cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ValueError(f"device: {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a CPU with AVX512-BF16 or AMX.

    CUDA GPUs are left out on purpose: LeNet-sized steps there are bound by kernel
    launches, which autocast's casts only add to (not measured to help)."""
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(name: str, cfg: TrialConfig, device: torch.device) -> str:
    """"fp32" or "bf16" for `cfg` on `device`; "auto" picks bf16 where it is native.

    SDLM (the paper's recipe) always runs in fp32: its curvature estimate is float32 work."""
    if name not in PRECISIONS:
        raise ValueError(f"precision: {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(device) and cfg.optimizer != "sdlm" else "fp32"
    if name == "bf16":
        if cfg.optimizer == "sdlm":
            raise ValueError("precision: the SDLM optimizer (the paper's recipe) runs in fp32 only; use precision fp32 or auto")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"precision: bf16 autocast is supported on cpu and cuda devices, not {device.type}; use precision fp32 or auto")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision: this CUDA GPU has no bfloat16; use precision fp32 or auto")
    return name


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """bfloat16 autocast for precision "bf16" (resolved); disabled for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_logits(cfg: TrialConfig, logits: torch.Tensor) -> torch.Tensor:
    """The logits the loss takes a softmax over: the model's, plus -j for the MAP loss."""
    return map_logits(logits, cfg.map_j) if cfg.loss == "map" else logits


def make_loss(cfg: TrialConfig) -> Loss:
    """Mean loss over a batch; both choices are cross-entropy over `loss_logits`."""
    if cfg.loss not in ("cross_entropy", "map"):
        raise ValueError(f"loss: unknown {cfg.loss!r}")
    return lambda logits, y: F.cross_entropy(loss_logits(cfg, logits), y)


def paper_rate(epoch: int, warmup: bool = False) -> float:
    """The paper's global learning rate for pass `epoch` (1-based); with `warmup`,
    pass 1 runs at PAPER_WARMUP of it."""
    rate = next((rate for last, rate in PAPER_RATES if epoch <= last), PAPER_RATES[-1][1])
    return rate * PAPER_WARMUP if warmup and epoch == 1 else rate


def make_optimizer(cfg: TrialConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The config's optimizer.  SGD, Adam and AdamW use torch's fused kernels on CPUs and
    CUDA GPUs (one kernel for all parameters: on the CPU 0.15 ms a step against 0.47 ms
    for AdamW's default on a tuned model, benchmarks/step_speed.py)."""
    fused = {"fused": True} if params and params[0].device.type in ("cpu", "cuda") else {}
    match cfg.optimizer:
        case "sgd":
            return torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, **fused
            )
        case "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
        case "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
        case "sdlm":
            return SDLM(params, lr=cfg.lr, mu=cfg.sdlm_mu, weight_decay=cfg.weight_decay, curvature=cfg.sdlm_curvature)
    raise ValueError(f"optimizer: unknown {cfg.optimizer!r}")


def make_schedule(cfg: TrialConfig, opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule over the whole run.  "paper" and "paper_warmup" scale `lr`
    per pass by the paper's table (lr = 0.0005 gives its rates exactly)."""
    total = max(total_steps, 1)
    steps_per_epoch = max(total // cfg.epochs, 1)
    match cfg.schedule:
        case "constant":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        case "cosine":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        case "step":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < 0.5 * total else 0.1 if step < 0.75 * total else 0.01)
        case "onecycle":
            cycle_momentum = "momentum" in opt.defaults or "betas" in opt.defaults
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total + 1, cycle_momentum=cycle_momentum)
        case "paper" | "paper_warmup":
            first, warmup = PAPER_RATES[0][1], cfg.schedule == "paper_warmup"
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: paper_rate(step // steps_per_epoch + 1, warmup) / first)
    raise ValueError(f"schedule: unknown {cfg.schedule!r}")


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
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int | None = None, precision: str = "fp32") -> torch.Tensor:
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
) -> tuple[float, float]:
    """(mean loss, accuracy) on normalised inputs; cross-entropy unless `loss` is given."""
    logits = predict_logits(model, x, precision=precision)
    loss_value = loss(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss_value, acc


def evaluate(
    model: nn.Module,
    split: Split,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    cfg: TrialConfig | None = None,
) -> tuple[float, float]:
    """(mean loss, accuracy) on a uint8 split; with `cfg`, its input scaling and loss
    (without, standardisation and cross-entropy)."""
    device = next(model.parameters()).device
    x = scale_input(split.x.to(device), cfg.input_norm if cfg else "standard", mean, std)
    return evaluate_tensors(model, x, split.y.to(device), make_loss(cfg) if cfg else F.cross_entropy)


def train(
    cfg: TrialConfig,
    data: Dataset,
    *,
    device: str | torch.device | None = None,
    on_epoch: OnEpoch | None = None,
    final: bool = False,
    precision: str = "fp32",
) -> TrainResult:
    """Train `cfg` on `data` and return the model and its per-epoch history.

    final=False (search): fit on `data.train`, evaluate each epoch on `data.val`.
    final=True (retrain-best, baseline): fit on train + val, evaluate on `data.test`.
    precision: "fp32", "bf16" or "auto" (see the module docstring and `resolve_precision`).
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    prec = resolve_precision(precision, cfg, dev)
    fit = data.full_train() if final else data.train
    held_out = data.test if final else data.val
    # The fit split stays uint8 on the device (a quarter of float32's memory) and each
    # batch is scaled by the config's `input_norm` as it is sliced; the held-out split once.
    x_fit, y_fit = fit.x.to(dev), fit.y.to(dev)
    x_eval = scale_input(held_out.x.to(dev), cfg.input_norm, data.mean, data.std)
    y_eval = held_out.y.to(dev)
    shift, scale = input_affine(cfg.input_norm, data.mean, data.std, dev)

    model = build_model(cfg, in_channels=data.channels, num_classes=data.num_classes).to(dev)
    # NHWC activations: about 1.6x faster convolutions on CPU (oneDNN), fine on CUDA.
    model = model.to(memory_format=torch.channels_last)
    result = TrainResult(model=model, params=count_params(model), precision=prec)
    opt = make_optimizer(cfg, list(model.parameters()))
    criterion = make_loss(cfg)
    n = len(y_fit)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = make_schedule(cfg, opt, steps_per_epoch * cfg.epochs)
    order = torch.Generator().manual_seed(cfg.seed)  # batch order and augmentation
    probes = torch.Generator().manual_seed(cfg.seed + 2)  # SDLM's curvature probes
    torch.manual_seed(cfg.seed + 1)  # dropout masks

    for epoch in range(1, cfg.epochs + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=order).to(dev)
        xs, ys = x_fit[perm], y_fit[perm]
        if cfg.augment:
            xs = random_shift(xs, cfg.augment, order)
        if isinstance(opt, SDLM):  # h_kk for this pass, from its first patterns
            opt.update_curvature(model, (xs[: cfg.sdlm_samples].to(torch.float32) - shift) * scale, lambda z: loss_logits(cfg, z), probes)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        diverged = False
        for step, i in enumerate(range(0, n, cfg.batch_size)):
            xb = (xs[i : i + cfg.batch_size].to(torch.float32) - shift) * scale
            yb = ys[i : i + cfg.batch_size]
            with autocast(prec, dev):
                logits = model(xb).float()
            loss = criterion(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            if step % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss):
                diverged = True
                break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        train_loss = loss_sum.item() / n
        if diverged or not math.isfinite(train_loss):
            result.outcome = "diverged"
            nan = float("nan")
            result.history.append(EpochStats(epoch, nan, nan, nan, nan, seconds, opt.param_groups[0]["lr"]))
            break
        val_loss, val_acc = evaluate_tensors(model, x_eval, y_eval, criterion, precision=prec)
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=correct.item() / n,
            val_loss=val_loss,
            val_acc=val_acc,
            seconds=seconds,
            lr=opt.param_groups[0]["lr"],
        )
        result.history.append(stats)
        result.seconds = time.perf_counter() - start
        if on_epoch is not None:
            on_epoch(stats)  # may raise (e.g. optuna.TrialPruned) to stop the run
    result.seconds = time.perf_counter() - start
    return result
