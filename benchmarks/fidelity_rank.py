"""How well does a short look predict a trial's final validation accuracy?

    python benchmarks/fidelity_rank.py [--study mnist] [--configs 32] [--epochs E] [--subset N]
                                       [--processes 2] [--out results.json] [--table results.json]

Samples --configs configs from the study's space (Optuna's RandomSampler, seeded, so
every run sees the same configs), trains each for the full budget (--epochs, default the
study's) with its schedule defined over that budget, and records validation accuracy at
1/8, 1/4 and 1/2 of the first epoch (on the study's fixed stratified validation subset,
of --subset images if given; 0 for the full split) and at every epoch end (full split).
It prints, for each point, the Spearman rank correlation between the accuracy there and
the final accuracy, with a 95% bootstrap interval over configs (scipy.stats.bootstrap, paired),
for all configs and for the better half (final accuracy at or above the median: the
ones a search has to tell apart once it has found the good region), and the share of
the final top 5 that are in the top third at the point.

--out keeps every measurement as JSON; --table prints the table from such a file without
training.  Runs --processes trainings at once, one thread each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import torch
from scipy import stats

if TYPE_CHECKING:
    from lenet_hpo.search.space import StudySpec

POINTS = (0.125, 0.25, 0.5)


def sample_configs(spec: StudySpec, n: int, seed: int) -> list[dict[str, Any]]:
    from lenet_hpo.search.space import suggest_config

    sampler = optuna.samplers.RandomSampler(seed=seed)
    trials = optuna.create_study(sampler=sampler, direction="maximize")
    out = []
    for _ in range(n):
        trial = trials.ask()
        out.append(suggest_config(trial, spec).to_dict())
        trials.tell(trial, 0.0)
    return out


def run_one(job: tuple[str, dict[str, Any], int, int]) -> dict[str, Any]:
    from lenet_hpo.config import TrialConfig
    from lenet_hpo.search.studyfile import load_spec
    from lenet_hpo.training import Probe, train

    study, cfg_dict, epochs, subset = job
    torch.set_num_threads(1)
    spec = load_spec(study)
    data = spec.load_data()
    cfg = TrialConfig.from_dict(cfg_dict).replace(epochs=epochs)
    split = data.val_subset(subset, spec.split_seed) if subset else None
    points: dict[str, float] = {}
    start = time.perf_counter()
    result = train(
        cfg,
        data,
        device="cpu",
        precision="fp32",
        probe=Probe(POINTS, split, lambda p: points.__setitem__(str(p.epoch), p.acc)),
    )
    for e in result.history:
        points[str(float(e.epoch))] = e.eval_acc
    return {"config": cfg_dict, "acc": points, "seconds": time.perf_counter() - start, "outcome": result.outcome}


def spearman_ci(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Spearman's rho and its 95% bootstrap interval over configs (paired resampling)."""
    rho = stats.spearmanr(x, y).statistic
    ci = stats.bootstrap(
        (x, y), lambda a, b: stats.spearmanr(a, b).statistic, paired=True, vectorized=False,
        n_resamples=2000, random_state=np.random.default_rng(0), method="percentile",
    ).confidence_interval
    return float(rho), float(ci.low), float(ci.high)


def table(results: list[dict[str, Any]], epochs: int) -> str:
    final = np.array([r["acc"].get(str(float(epochs)), np.nan) for r in results])
    keys = [str(p) for p in POINTS] + [str(float(e)) for e in range(1, epochs)]
    top5 = set(np.argsort(-np.nan_to_num(final, nan=-1))[:5])
    better = final >= np.nanmedian(final)
    lines = [
        f"{len(results)} configs, full budget {epochs} epochs; final val acc: best {np.nanmax(final):.4f},"
        f" median {np.nanmedian(final):.4f}",
        "| point (epochs) | Spearman rho, all | 95% bootstrap CI | rho, the better half | 95% bootstrap CI"
        " | final top 5 in the point's top third |",
        "|---|---|---|---|---|---|",
    ]
    for k in keys:
        at = np.array([r["acc"].get(k, np.nan) for r in results])
        ok = ~(np.isnan(at) | np.isnan(final))
        rho, lo, hi = spearman_ci(at[ok], final[ok])
        rho_b, lo_b, hi_b = spearman_ci(at[ok & better], final[ok & better])
        third = set(np.argsort(-np.nan_to_num(at, nan=-1))[: max(1, len(at) // 3)])
        lines.append(f"| {float(k):g} | {rho:.3f} | [{lo:.3f}, {hi:.3f}] | {rho_b:.3f} | [{lo_b:.3f}, {hi_b:.3f}]"
                     f" | {len(top5 & third)} of 5 |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="mnist")
    ap.add_argument("--configs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="seed of the config sampler")
    ap.add_argument("--epochs", type=int, default=None, help="full budget (default: the study's epochs)")
    ap.add_argument("--subset", type=int, default=None,
                    help="validation images for the sub-epoch points (0: all; default: the study's val_subset)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write every measurement to this JSON file")
    ap.add_argument("--table", type=Path, default=None, help="print the table of an earlier --out file and exit")
    args = ap.parse_args()
    if args.table is not None:
        saved = json.loads(args.table.read_text())
        print(table(saved["results"], saved["epochs"]))
        return
    from lenet_hpo.search.studyfile import load_spec

    spec = load_spec(args.study)
    epochs = args.epochs or spec.epochs
    subset = spec.val_subset if args.subset is None else args.subset
    configs = sample_configs(spec, args.configs, args.seed)
    jobs = [(args.study, c, epochs, subset) for c in configs]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        results = []
        for r in pool.imap(run_one, jobs):
            results.append(r)
            print(
                f"{len(results)}/{len(jobs)}: final {r['acc'].get(str(float(epochs)), float('nan')):.4f}"
                f" ({r['seconds']:.0f} s)",
                flush=True,
            )
    wall = time.perf_counter() - start
    if args.out is not None:
        args.out.write_text(
            json.dumps({"epochs": epochs, "subset": subset, "wall_s": wall, "results": results}, indent=1)
        )
    print(f"wall time {wall:.0f} s, {args.processes} processes x 1 thread, fp32")
    print(table(results, epochs))


if __name__ == "__main__":
    main()
