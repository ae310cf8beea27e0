"""retrain-best: the tuned config against the baseline, on equal terms.

Fairness rules (stated again on the report):
- both are trained by the same `train()` on the same data (the full official
  training set: train + validation) for the same number of epochs, each with its
  own batch size, learning rate and schedule as configured;
- both run on the same seeds (weight init and batch order), so per-seed results pair up;
- both compute in the same precision: the study's (`precision` in its [study] table,
  "auto" by default) unless --precision says otherwise; SDLM (the classic recipe)
  always runs in fp32.  Each run records the precision it used;
- the official test split is touched here for the first time: selection happened
  on the validation split only (and, with --top-k, re-scoring on fresh seeds,
  still on validation).

Each run's checkpoint and history go to `studies/<study>/retrain/<role>-seed<k>.pt`;
a rerun skips runs whose checkpoint is already there with the same config.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import statistics
import tomllib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lenet_hpo.checkpoint import load_checkpoint, save_checkpoint
from lenet_hpo.config import TrialConfig, named_config
from lenet_hpo.data import Dataset, atomic_write_bytes
from lenet_hpo.errors import CheckpointError, StudyError
from lenet_hpo.model import count_macs
from lenet_hpo.search import best_trials, get_study, load_spec_data
from lenet_hpo.space import STUDIES_DIR, StudySpec, check_name, config_from_params, parse_spec
from lenet_hpo.stats import compare, summarize
from lenet_hpo.train import resolve_device, resolve_precision, train

log = logging.getLogger(__name__)
RESCORE_SEED_BASE = 1000  # --top-k re-scoring seeds: disjoint from the retraining seeds 0..n-1


def retrain_dir(study_name: str, studies_dir: Path | None = None) -> Path:
    return (studies_dir or STUDIES_DIR) / check_name(study_name) / "retrain"


def spec_of(study: Any) -> StudySpec:
    """The study's own definition, as recorded when it was created."""
    text = study.user_attrs.get("study_file")
    if not text:
        raise StudyError(f"study {study.study_name!r} was not created by lenet-hpo (no study_file attribute)")
    return parse_spec(tomllib.loads(text), name=study.study_name, text=text)


@dataclass(frozen=True)
class Run:
    role: str  # "best" or a named config ("baseline", "classic")
    seed: int
    test_accuracy: float
    test_loss: float
    epochs: int
    seconds: float
    seconds_per_epoch: float
    params: int
    macs: int
    checkpoint: str
    outcome: str
    precision: str = "fp32"  # resolved: fp32 or bf16 (checkpoints from before this field were fp32)


def _run_one(role: str, cfg: TrialConfig, data: Dataset, out: Path, device: torch.device, meta: dict[str, Any], precision: str) -> Run:
    path = out / f"{role}-seed{cfg.seed}.pt"
    prec = resolve_precision(precision, cfg, device)
    if path.exists():
        try:
            ck = load_checkpoint(path)
            done = Run(**ck.extra["run"])
            if ck.config == cfg and ck.data.get("checksum") == data.checksum and done.precision == prec:
                log.info("%s: already done, skipped", path)
                return done
        except (CheckpointError, KeyError, TypeError):
            log.warning("%s: unreadable or from another version; training again", path)
    result = train(cfg, data, device=device, final=True, precision=prec)
    history = [e.to_dict() for e in result.history]
    final = result.history[-1]
    seconds_per_epoch = statistics.fmean(e.seconds for e in result.history)
    run = Run(
        role=role,
        seed=cfg.seed,
        test_accuracy=final.val_acc if result.outcome == "completed" else math.nan,
        test_loss=final.val_loss,
        epochs=len(history),
        seconds=result.seconds,
        seconds_per_epoch=seconds_per_epoch,
        params=result.params,
        macs=count_macs(result.model, data.channels),
        checkpoint=str(path),
        outcome=result.outcome,
        precision=result.precision,
    )
    save_checkpoint(path, result.model, cfg, data.meta(), {"history": history, "run": run.__dict__, **meta})
    return run


# Worker processes (retrain runs in parallel): each loads the data once.
_WORKER_DATA: Dataset | None = None


def _init_worker(spec_text: str, name: str, data_dir: Any, threads: int) -> None:
    global _WORKER_DATA
    torch.set_num_threads(threads)
    spec = parse_spec(tomllib.loads(spec_text), name=name, text=spec_text)
    _WORKER_DATA = load_spec_data(spec, data_dir)  # moved to a GPU by train() when one is used


def _run_in_worker(role: str, cfg: dict[str, Any], out: str, device: str, meta: dict[str, Any], precision: str) -> Run:
    assert _WORKER_DATA is not None
    return _run_one(role, TrialConfig.from_dict(cfg), _WORKER_DATA, Path(out), resolve_device(device), meta, precision)


def rescore(candidates: list[Any], spec: StudySpec, data: Dataset, seeds: int, device: torch.device, precision: str) -> list[dict[str, Any]]:
    """Mean validation accuracy of each candidate trial's config on fresh seeds."""
    rows = []
    for t in candidates:
        cfg = config_from_params(t.params, spec)
        runs = [train(cfg.replace(seed=RESCORE_SEED_BASE + s), data, device=device, precision=precision) for s in range(seeds)]
        accs = [r.history[-1].val_acc for r in runs]
        rows.append({"trial": t.number, "search_value": t.values[0], "rescored_mean": statistics.fmean(accs), "rescored": accs})
    return rows


def retrain_best(
    study_name: str,
    url: str,
    *,
    seeds: int = 5,
    epochs: int | None = None,
    top_k: int = 1,
    baselines: tuple[str, ...] = ("baseline",),
    device: str = "auto",
    workers: int | None = None,
    precision: str | None = None,
    data_dir: Any = None,
    studies_dir: Path | None = None,
    on_run: Callable[[Run], None] | None = None,
) -> dict[str, Any]:
    """Retrain the best trial and the baseline(s) on every seed; return the comparison.

    `epochs` defaults to the first baseline's epochs (20 for BASELINE), used for all.
    `precision` (auto, fp32, bf16) defaults to the study's; every run uses it.
    `workers` runs that many trainings at once in separate processes, each with
    cores / workers threads (default: one per core on a CPU, one on a GPU).
    """
    if seeds < 2:
        raise ValueError("seeds: need at least 2 to estimate an interval")
    study = get_study(study_name, url)
    spec = spec_of(study)
    candidates = best_trials(study, k=top_k)
    dev = resolve_device(device)
    precision = precision or spec.precision
    data = load_spec_data(spec, data_dir)
    rescored: list[dict[str, Any]] = []
    chosen = candidates[0]
    if top_k > 1:
        rescored = rescore(candidates, spec, data, seeds, dev, precision)
        number = max(rescored, key=lambda r: r["rescored_mean"])["trial"]
        chosen = next(t for t in candidates if t.number == number)
    best_cfg = config_from_params(chosen.params, spec)
    base_cfgs = {name: named_config(name) for name in baselines}
    for cfg in (best_cfg, *base_cfgs.values()):
        resolve_precision(precision, cfg, dev)  # an impossible precision fails before the first run
    budget = epochs or base_cfgs[baselines[0]].epochs
    out = retrain_dir(study_name, studies_dir)
    out.mkdir(parents=True, exist_ok=True)
    roles = {"best": best_cfg, **base_cfgs}
    jobs = [(role, cfg.replace(epochs=budget, seed=seed)) for seed in range(seeds) for role, cfg in roles.items()]
    meta = {"trial": chosen.number, "study": study_name}
    cores = os.cpu_count() or 1
    n_workers = min(len(jobs), workers or (1 if dev.type != "cpu" else cores))
    runs: list[Run] = []
    if n_workers == 1:
        for role, cfg in jobs:
            runs.append(_run_one(role, cfg, data, out, dev, meta, precision))
            if on_run is not None:
                on_run(runs[-1])
    else:
        init = (spec.text, spec.name, data_dir, max(1, cores // n_workers))
        with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=init) as pool:
            futures = [pool.submit(_run_in_worker, role, cfg.to_dict(), str(out), str(dev), meta, precision) for role, cfg in jobs]
            for future in as_completed(futures):
                runs.append(future.result())
                if on_run is not None:
                    on_run(runs[-1])
    table = pd.DataFrame([r.__dict__ for r in runs]).sort_values(["seed", "role"], kind="stable")
    atomic_write_bytes(out / "results.csv", table.to_csv(index=False).encode())

    def block(role: str, cfg: TrialConfig) -> dict[str, Any]:
        rows = table[table.role == role].sort_values("seed")
        s = summarize(rows.test_accuracy.tolist())
        return {
            "config": cfg.replace(epochs=budget).to_dict(),
            "seeds": rows.seed.tolist(),
            "test_accuracy": rows.test_accuracy.tolist(),
            "mean": s.mean,
            "std": s.std,
            "ci95": list(s.ci95),
            "params": int(rows.params.iloc[0]),
            "macs": int(rows.macs.iloc[0]),
            "seconds_per_epoch": float(rows.seconds_per_epoch.median()),
            "precision": rows.precision.iloc[0],
            "checkpoints": rows.checkpoint.tolist(),
        }

    result: dict[str, Any] = {
        "study": study_name,
        "trial": chosen.number,
        "search_value": chosen.values[0],
        "top_k": top_k,
        "rescored": rescored,
        "epochs": budget,
        "n_seeds": seeds,
        "dataset": data.meta(),
        "best": block("best", best_cfg),
        "results_csv": str(out / "results.csv"),
    }
    comparisons = {}
    for name, cfg in base_cfgs.items():
        result[name] = block(name, cfg)
        a = table[table.role == "best"].sort_values("seed").test_accuracy.tolist()
        b = table[table.role == name].sort_values("seed").test_accuracy.tolist()
        comparisons[name] = compare(a, b, paired=True, names=("the tuned model", f"the {name}")).to_dict()
    result["difference"] = comparisons[baselines[0]]
    result["comparisons"] = comparisons
    atomic_write_bytes(out / "summary.json", json.dumps(result, indent=2).encode())
    return result


def load_summary(study_name: str, studies_dir: Path | None = None) -> dict[str, Any]:
    path = retrain_dir(study_name, studies_dir) / "summary.json"
    if not path.exists():
        raise StudyError(f"no retrain results for study {study_name!r} ({path}); run `python -m lenet_hpo retrain-best --study {study_name}` first")
    return json.loads(path.read_text())
