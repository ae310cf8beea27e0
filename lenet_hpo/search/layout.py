"""Pick the worker layout (processes x threads) that trains fastest on this machine.

Measured, not assumed: for each split of the CPU cores into W processes of T
threads (W * T = cores), W processes train a LeNet-5 on random data side by side
for a couple of seconds and the total samples/s is recorded.  The winner is cached
per machine (CPU model, core count, torch version) in
`~/.cache/lenet-hpo/layout.json`, so the measurement runs once.

On 2 cores of the CI kind, two one-thread processes beat one two-thread process
(oneDNN's per-op threading costs more than it gains on LeNet-sized tensors).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lenet_hpo.config import BASELINE
from lenet_hpo.files import cache_dir
from lenet_hpo.model import build_model

SECONDS = 2.0
BATCH = 128


def _rate(threads: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    torch.set_num_threads(threads)
    model = build_model(BASELINE.replace(activation="relu", pooling="max", batch_norm=True)).to(
        memory_format=torch.channels_last
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, 1, 32, 32), torch.randint(0, 10, (BATCH,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(5):  # warm-up: allocator, oneDNN primitives
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += BATCH
    out.put(n / (time.perf_counter() - t0))


def measure(workers: int, threads: int, seconds: float = SECONDS) -> float:
    """Total training samples/s of `workers` processes with `threads` threads each."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rate, args=(threads, seconds, queue)) for _ in range(workers)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def candidates(cores: int) -> list[tuple[int, int]]:
    return [(w, cores // w) for w in range(1, cores + 1) if cores % w == 0]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(cores: int) -> str:
    return f"{cpu_model()}|{cores}|torch {torch.__version__}"


def best_cpu_layout(
    *,
    cores: int | None = None,
    refresh: bool = False,
    cache: Path | None = None,
    measure: Callable[[int, int], float] = measure,
) -> tuple[int, int]:
    """(workers, threads) with the highest throughput `measure`d over the splits of
    `cores` (default: this machine's); cached per machine in `cache` (default:
    <cache dir>/layout.json)."""
    cores = cores or os.cpu_count() or 1
    cache = cache if cache is not None else cache_dir() / "layout.json"
    key = machine_key(cores)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not refresh and key in known:
        w, t = known[key]["layout"]
        return int(w), int(t)
    rates = {f"{w}x{t}": measure(w, t) for w, t in candidates(cores)}
    best = max(rates, key=lambda k: rates[k])
    w, t = (int(v) for v in best.split("x"))
    known[key] = {"layout": [w, t], "samples_per_s": rates}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=2))
    except OSError:
        pass  # a read-only home: measure again next time
    return w, t


def default_layout(
    device: torch.device, workers: int | None, threads: int | None = None, *, cores: int | None = None
) -> tuple[int, int]:
    """(workers, threads per worker).  An explicit count wins.  On a CPU the split of
    the cores that trained fastest when measured on this machine (`layout.py`, cached);
    on a GPU several workers share it (one per two cores, at most 4) so its kernels overlap."""
    cores = cores or os.cpu_count() or 1
    if workers is None and threads is None and device.type == "cpu":
        return best_cpu_layout(cores=cores)
    if workers is None:
        workers = min(4, max(1, cores // 2)) if device.type == "cuda" else max(1, cores // (threads or 1))
    return workers, threads or max(1, cores // workers)
