"""What a training step costs, side by side: fp32 against bf16 autocast (and what bf16
does to accuracy), and torch's default optimizer step against its fused one.

    python benchmarks/step_speed.py [--samples 12800] [--repeats 3] [--seeds 2] [--epochs 5]

Prints, all measured in this run on this machine, one thread per run:
1. seconds per epoch of 50,000 MNIST images (the default study's fit split) with
   `train()` in fp32 and in bf16, for the baseline LeNet-5, a tuned model of the kind
   the default study settles on (9/33 filters, batch norm, GELU, max pooling) and the
   largest model of the default space, at batch 64 and 256; medians, interleaved so
   drifts in machine speed hit both alike; ratio fp32 / bf16;
2. milliseconds per optimizer step on the tuned model's parameters: SGD (momentum),
   Adam and AdamW, torch's default (foreach) against fused (what `train()` uses);
3. validation accuracy of the tuned model after --epochs epochs on the default
   study's split, fp32 and bf16, for --seeds seeds, and the mean difference.

`precision = "auto"` (the studies' default) picks bf16 only where the CPU computes
bfloat16 natively (AVX512-BF16 or AMX): elsewhere bf16 is emulated and slower.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lenet_hpo.config import BASELINE, TrialConfig
from lenet_hpo.data import load_data
from lenet_hpo.model import build_model
from lenet_hpo.training import native_bf16, train

EPOCH = 50_000
TUNED = BASELINE.replace(c1=9, c3=33, f5=81, f6=45, activation="gelu", pooling="max", batch_norm=True)
TUNED = TUNED.replace(dropout=0.16, optimizer="adamw", lr=2e-3, schedule="cosine")
LARGEST = BASELINE.replace(
    c1=16, c3=48, f5=256, f6=192, activation="relu", pooling="max", batch_norm=True, optimizer="adamw", lr=1e-3
)
MODELS = {"baseline": BASELINE, "tuned": TUNED, "largest": LARGEST}


def epoch_seconds(cfg: TrialConfig, samples: int, precision: str) -> float:
    data = load_data("mnist", train_limit=samples)
    r = train(cfg.replace(epochs=1), data, device="cpu", precision=precision)
    return r.history[0].seconds * EPOCH / len(data.train)


def optimizer_step_ms(kind: str, fused: bool, steps: int = 300) -> float:
    params = list(build_model(TUNED).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    extra = {"fused": True} if fused else {"foreach": True}
    opt = {
        "sgd": lambda: torch.optim.SGD(params, lr=0.01, momentum=0.9, **extra),
        "adam": lambda: torch.optim.Adam(params, lr=1e-3, **extra),
        "adamw": lambda: torch.optim.AdamW(params, lr=1e-3, **extra),
    }[kind]()
    for _ in range(20):
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=12_800, help="images per timed epoch (default: 12,800)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2, help="seeds of the accuracy comparison; 0 skips it (default: 2)")
    ap.add_argument(
        "--epochs", type=int, default=5, help="epochs of the accuracy comparison (default: 5, the study's budget)"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; native bfloat16 on this CPU: {native_bf16(torch.device('cpu'))}; 1 thread")
    for name, cfg in MODELS.items():
        for batch in (64, 256):
            runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for _ in range(args.repeats):
                for precision in runs:
                    runs[precision].append(epoch_seconds(cfg.replace(batch_size=batch), args.samples, precision))
            fp32, bf16 = statistics.median(runs["fp32"]), statistics.median(runs["bf16"])
            print(f"{name:8s} batch {batch:3d}: s/epoch fp32 {fp32:6.2f} | bf16 {bf16:6.2f} | ratio {fp32 / bf16:.2f}x")

    for kind in ("sgd", "adam", "adamw"):
        step_ms: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(5):
            for fused in step_ms:
                step_ms[fused].append(optimizer_step_ms(kind, fused))
        default, fused_ms = statistics.median(step_ms[False]), statistics.median(step_ms[True])
        print(
            f"{kind:5s} step: default (foreach) {default:.3f} ms | fused {fused_ms:.3f} ms | ratio"
            f" {default / fused_ms:.2f}x"
        )

    if args.seeds:
        data = load_data("mnist")
        diffs = []
        for seed in range(args.seeds):
            acc = {
                p: train(TUNED.replace(epochs=args.epochs, seed=seed), data, device="cpu", precision=p)
                .history[-1]
                .eval_acc
                for p in ("fp32", "bf16")
            }
            diffs.append(acc["bf16"] - acc["fp32"])
            print(
                f"tuned, {args.epochs} epochs, seed {seed}: validation accuracy fp32 {acc['fp32']:.4f} | bf16"
                f" {acc['bf16']:.4f}"
            )
        print(f"mean difference bf16 - fp32: {100 * statistics.fmean(diffs):+.2f} points over {args.seeds} seeds")


if __name__ == "__main__":
    main()
