"""Where a tuned model's epoch goes: one epoch of variants of one config, side by side.

    python benchmarks/epoch_variants.py [--images 20000] [--repeats 3] [--threads 1]

Trains one epoch of each variant of a typical tuned config of the default study (c1 14,
c3 31, f5 172, f6 16, leaky ReLU, average pooling, batch norm, shifts, Adam, batch 64) and
of the baseline, in turns (each repeat runs every variant once), on `--images` training
images in fp32, and prints each variant's median seconds per epoch of 60,000 images and
its ratio to the tuned config.  The variants take one thing away or change one setting:
batch norm, the shifts, ReLU for leaky ReLU, batch 128, and NCHW (contiguous) tensors
instead of channels-last.  On an AVX-512 machine, run it with ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2 to time the AVX2 code paths (printed).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Iterator

import torch

from lenet_hpo.config import BASELINE
from lenet_hpo.data import load_data
from lenet_hpo.training import train

TUNED = BASELINE.replace(c1=14, c3=31, f5=172, f6=16, activation="leaky_relu", pooling="avg", batch_norm=True,
                         dropout=0.02, optimizer="adam", lr=0.0024, schedule="cosine", weight_decay=7.9e-6,
                         augment=1, batch_size=64, epochs=1)
VARIANTS = {
    "tuned": (TUNED, False),
    "no batch norm": (TUNED.replace(batch_norm=False), False),
    "no shifts": (TUNED.replace(augment=0), False),
    "ReLU": (TUNED.replace(activation="relu"), False),
    "batch 128": (TUNED.replace(batch_size=128), False),
    "NCHW tensors": (TUNED, True),
    "baseline": (BASELINE.replace(epochs=1), False),
}


@contextlib.contextmanager
def contiguous() -> Iterator[None]:
    """train() puts models in channels-last; this makes that a no-op (contiguous NCHW)."""
    saved = torch.channels_last
    torch.channels_last = torch.contiguous_format
    try:
        yield
    finally:
        torch.channels_last = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000, help="training images per epoch (default: 20,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("mnist", val_size=10_000, train_limit=args.images)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), fp32,"
          f" {len(data.train):,} images an epoch, {args.repeats} repeats in turns", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, (cfg, nchw) in VARIANTS.items():
            with contiguous() if nchw else contextlib.nullcontext():
                seconds[name].append(train(cfg, data, precision="fp32").history[-1].seconds)
    scale = 60_000 / len(data.train)
    ref = statistics.median(seconds["tuned"])
    print("| variant | s per 60,000-image epoch (median) | ratio to tuned |")
    print("|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {scale * statistics.median(s):.1f} | {statistics.median(s) / ref:.2f}x |")


if __name__ == "__main__":
    main()
