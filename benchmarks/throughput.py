"""Training throughput against the seed pipeline and against the compute floor, side by side.

    python benchmarks/throughput.py [--samples 12800] [--repeats 3]

Prints, all measured in this run on this machine:
1. single process: seed pipeline (per-sample transforms through a DataLoader) vs our
   `train()`, samples/s and ratio, at batch 64;
2. whole machine: the seed pipeline (one process, all threads, as the notebook runs)
   vs our best layout (W processes x T threads, each running `train()`), ratio;
3. seconds per epoch (60,000 images) at batch 64 and at the fastest batch size,
   against the FLOP floor (training FLOPs per sample x 60,000 / measured matmul peak).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import torch

from lenet_hpo.config import BASELINE
from lenet_hpo.data import default_data_dir, fetch, load_data
from lenet_hpo.model import build_model, count_macs
from lenet_hpo.search.layout import best_cpu_layout
from lenet_hpo.training import train

EPOCH = 60_000


def ours(samples: int, batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    data = load_data("mnist", train_limit=samples)
    r = train(BASELINE.replace(epochs=1, batch_size=batch), data, device="cpu")
    return len(data.train) / r.history[0].seconds


def _ours_proc(samples: int, batch: int, threads: int, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    q.put(ours(samples, batch, threads))


def ours_whole_machine(samples: int, batch: int, workers: int, threads: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ours_proc, args=(samples, batch, threads, q)) for _ in range(workers)]
    for p in procs:
        p.start()
    rates = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def matmul_gflops(threads: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e9


def main() -> None:
    from epoch_throughput import seed_pipeline_rate  # same folder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=12_800)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    fetch("mnist", default_data_dir())
    raw = default_data_dir() / "mnist" / "raw"
    w, t = best_cpu_layout()
    med = statistics.median

    torch.set_num_threads(1)
    seed1 = med(seed_pipeline_rate(raw, args.samples, 64) for _ in range(args.repeats))
    ours1 = med(ours(args.samples, 64, 1) for _ in range(args.repeats))
    torch.set_num_threads(cores)
    seed_all = med(seed_pipeline_rate(raw, args.samples, 64) for _ in range(args.repeats))
    ours_all = med(ours_whole_machine(args.samples, 64, w, t) for _ in range(args.repeats))
    print(f"machine: {cores} cores, torch {torch.__version__}; best layout {w} process(es) x {t} thread(s)")
    print(
        f"1 process, 1 thread, batch 64 : seed {seed1:8.0f} samples/s | ours {ours1:8.0f} | ratio {ours1 / seed1:.2f}x"
    )
    print(
        f"whole machine, batch 64       : seed {seed_all:8.0f} samples/s | ours {ours_all:8.0f} | ratio"
        f" {ours_all / seed_all:.2f}x"
    )

    batches = [64, 128, 256, 512]
    rates = {b: med(ours_whole_machine(args.samples, b, w, t) for _ in range(args.repeats)) for b in batches}
    best_b = max(rates, key=lambda b: rates[b])
    model = build_model(BASELINE)
    train_flops = 3 * 2 * count_macs(model)  # forward + backward (~2x forward) per sample
    peak = matmul_gflops(cores)
    floor = EPOCH * train_flops / (peak * 1e9)
    print(
        f"training FLOPs per sample: {train_flops / 1e6:.2f} M; matmul peak {peak:.0f} GFLOP/s; epoch floor"
        f" {floor:.3f} s"
    )
    for b in (64, best_b):
        sec = EPOCH / rates[b]
        print(
            f"epoch of 60k at batch {b:3d}: {sec:6.2f} s = {sec / floor:6.1f}x the FLOP floor ({rates[b]:.0f}"
            f" samples/s)"
        )


if __name__ == "__main__":
    main()
