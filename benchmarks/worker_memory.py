"""Peak memory of one search worker on MNIST (target: at most 1.5 GB).

    python benchmarks/worker_memory.py

Loads MNIST as a worker does and trains the largest config of the default study's
space for one epoch with augmentation, in the study's precision (auto: bf16 where
the CPU has it), then prints the peak resident set size
(which includes about 0.7 GB of shared torch libraries) and the unique memory.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from lenet_hpo.config import TrialConfig
from lenet_hpo.search.studyfile import load_spec
from lenet_hpo.training import train


def uss_mb() -> float:
    """Private (unique) memory of this process from /proc/self/smaps_rollup."""
    total = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


def main() -> None:
    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spec = load_spec("mnist")
    data = spec.load_data()
    largest = {"c1": 16, "c3": 48, "f5": 256, "f6": 192, "batch_norm": True, "dropout": 0.2, "augment": 2}
    big = TrialConfig(**largest, activation="relu", pooling="max", optimizer="adam", lr=2e-3, batch_size=64, epochs=1)
    result = train(big, data, device="cpu", precision=spec.precision)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"after imports: {base:.0f} MB RSS")
    print(
        f"peak RSS of a worker (largest config, 1 epoch, augment 2, {result.precision}): {peak:.0f} MB (target <="
        f" 1536 MB)"
    )
    print(f"unique memory now: {uss_mb():.0f} MB")


if __name__ == "__main__":
    main()
