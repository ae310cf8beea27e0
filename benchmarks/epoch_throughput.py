"""Training throughput: the seed-000 pipeline against lenet-hpo's `train()`, side by side.

Seed pipeline: torchvision MNIST with per-sample Resize(32)/ToTensor/Normalize
through a DataLoader (batch 64, shuffled), the same LeNet-5 (BASELINE) and SGD
(lr 0.01, momentum 0.9).  Ours: `train()` on pre-tensorised data.  Both in this
process, same threads, alternating, median of several repeats.

    python benchmarks/epoch_throughput.py [--samples 12800] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from torch.utils.data import DataLoader, Subset

from lenet_hpo.config import BASELINE
from lenet_hpo.data import default_data_dir, fetch, load_data
from lenet_hpo.model import build_model
from lenet_hpo.training import train


def seed_pipeline_rate(raw_dir: Path, samples: int, batch_size: int) -> float:
    """Samples/s of the seed notebook's loop (data loading included), over `samples` samples."""
    with tempfile.TemporaryDirectory() as root:
        # torchvision reads <root>/MNIST/raw/<files>: link our verified copies there.
        (Path(root) / "MNIST").mkdir()
        os.symlink(raw_dir.resolve(), Path(root) / "MNIST" / "raw")
        transform = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
        ds = torchvision.datasets.MNIST(root, train=True, download=False, transform=transform)
        loader = DataLoader(Subset(ds, range(samples)), batch_size=batch_size, shuffle=True)
        model = build_model(BASELINE)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        t0 = time.perf_counter()
        for images, labels in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
        return samples / (time.perf_counter() - t0)


def our_rate(data, samples: int, batch_size: int) -> float:
    """Samples/s of `train()`'s training steps over one epoch of `samples` samples."""
    result = train(BASELINE.replace(epochs=1, batch_size=batch_size), data, device="cpu")
    return samples / result.history[0].seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=12_800, help="training samples per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = default_data_dir()
    fetch("mnist", data_dir)  # verified raw files and tensor cache
    data = load_data("mnist", data_dir=data_dir, train_limit=args.samples)
    seed, ours = [], []
    for _ in range(args.repeats):
        seed.append(seed_pipeline_rate(data_dir / "mnist" / "raw", args.samples, args.batch_size))
        ours.append(our_rate(data, len(data.train), args.batch_size))
    s, o = statistics.median(seed), statistics.median(ours)
    print(f"threads={args.threads} batch={args.batch_size} samples={args.samples} repeats={args.repeats}")
    print(f"seed pipeline : {s:9.0f} samples/s  (runs: {', '.join(f'{r:.0f}' for r in seed)})")
    print(f"lenet-hpo     : {o:9.0f} samples/s  (runs: {', '.join(f'{r:.0f}' for r in ours)})")
    print(f"ratio         : {o / s:9.2f}x")


if __name__ == "__main__":
    main()
