"""What a faithful per-pattern SDLM update costs: CLASSIC's pass at batch 1, 4 and 16.

One pass of `train()` over `--samples` MNIST training images with the `CLASSIC`
recipe at each batch size in turn, interleaved, median of `--repeats` after a
warm-up round; separately, the h_kk estimate on 500 patterns that starts every pass
(`SDLM.update_curvature`).  Prints the update cost per pattern (the pass less its h_kk estimate), what a
60,000-image pass and a 20-pass run cost at that rate, and the ratio to batch 16.

    python benchmarks/classic_batching.py [--samples 6000] [--repeats 3] [--threads 1] [--curvature gauss_newton]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lenet_hpo.classic import CLASSIC
from lenet_hpo.config import TrialConfig
from lenet_hpo.data import Dataset, input_affine, load_data
from lenet_hpo.model import build_model
from lenet_hpo.training import loss_logits, make_optimizer, train

BATCHES = (1, 4, 16)


def curvature_seconds(cfg: TrialConfig, data: Dataset) -> float:
    """Seconds of one h_kk estimate on the config's `sdlm_samples` patterns."""
    model = build_model(cfg)
    opt = make_optimizer(cfg, list(model.parameters()))
    shift, scale = input_affine(cfg.input_norm, data.mean, data.std)
    x = (data.train.x[: cfg.sdlm_samples].float() - shift) * scale
    t0 = time.perf_counter()
    opt.update_curvature(model, x, lambda z: loss_logits(cfg, z), torch.Generator().manual_seed(0))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=6_000, help="training images per measured pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--curvature", choices=("paper", "gauss_newton"), default=CLASSIC.sdlm_curvature)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("mnist", train_limit=args.samples)
    n = len(data.train)
    cfg = CLASSIC.replace(epochs=1, sdlm_curvature=args.curvature)
    seconds: dict[int, list[float]] = {b: [] for b in BATCHES}
    curvature: list[float] = []
    for r in range(args.repeats + 1):  # round 0 warms up (allocator, oneDNN kernels) and is not counted
        c = curvature_seconds(cfg, data)
        round_s = {b: train(cfg.replace(batch_size=b), data, device="cpu").history[0].seconds for b in BATCHES}
        if r:
            curvature.append(c)
            for b in BATCHES:
                seconds[b].append(round_s[b])
    curv = statistics.median(curvature)
    per = {b: (statistics.median(seconds[b]) - curv) / n for b in BATCHES}
    print(f"threads={args.threads} samples={n} repeats={args.repeats}")
    print(f"h_kk estimate ({args.curvature}, {min(n, cfg.sdlm_samples)} patterns, once a pass): {curv:.2f} s")
    for b in BATCHES:
        pass_s = curv + per[b] * 60_000
        print(
            f"batch {b:2d}: {per[b] * 1e3:5.2f} ms/pattern | 60,000-image pass {pass_s:4.0f} s"
            f" | 20 passes {pass_s * 20 / 60:4.0f} min | {per[b] / per[16]:4.1f}x batch 16"
            f"  (passes of {n}, s: {', '.join(f'{s:.1f}' for s in seconds[b])})"
        )


if __name__ == "__main__":
    main()
