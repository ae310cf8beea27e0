"""Evaluation batch size on the CPU: seconds to evaluate the 10,000 validation images,
side by side for several batch sizes, as a search trial does after every epoch.

    python benchmarks/eval_batch.py [--repeats 5] [--threads 1]

Two models: the baseline LeNet-5 and a tuned model of the kind the default study
settles on (9/33 filters, batch norm, GELU, max pooling).  Prints the
median seconds per batch size and its ratio to 1,024 (the batch size used on every
device before), and the batch size `train.predict_logits` uses on this device.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lenet_hpo.config import BASELINE, TrialConfig
from lenet_hpo.model import build_model
from lenet_hpo.training import EVAL_BATCH, EVAL_BATCH_DEFAULT, predict_logits

TUNED = BASELINE.replace(c1=9, c3=33, f5=81, f6=45, activation="gelu", pooling="max", batch_norm=True, dropout=0.16)
BATCHES = (128, 256, 512, 1024)


def seconds(cfg: TrialConfig, x: torch.Tensor, batch: int) -> float:
    model = build_model(cfg).to(memory_format=torch.channels_last)
    predict_logits(model, x[:batch], batch)  # warm-up: oneDNN primitives for this shape
    t0 = time.perf_counter()
    predict_logits(model, x, batch)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a search worker uses 1 on 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(10_000, 1, 32, 32)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); default batch on cpu:"
        f" {EVAL_BATCH.get('cpu', EVAL_BATCH_DEFAULT)}"
    )
    for name, cfg in (("baseline", BASELINE), ("tuned", TUNED)):
        # interleave the batch sizes so drifts in machine speed hit them alike
        runs: dict[int, list[float]] = {b: [] for b in BATCHES}
        for _ in range(args.repeats):
            for b in BATCHES:
                runs[b].append(seconds(cfg, x, b))
        med = {b: statistics.median(v) for b, v in runs.items()}
        cells = " | ".join(f"{b}: {med[b]:.2f} s ({med[1024] / med[b]:.2f}x)" for b in BATCHES)
        print(f"{name:8s} 10,000 images: {cells}")


if __name__ == "__main__":
    main()
