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

Each run's checkpoint, history and test predictions go to
`studies/<study>/<key>/retrain/<role>-seed<k>.pt` (`final.train_final`; the key:
`StoredStudy.key`); a rerun reuses runs already there, and baseline runs come from the
shared run cache when another study (or an earlier run) trained them already.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import multiprocessing
import os
import queue
import statistics
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial

from lenet_hpo.config import TrialConfig
from lenet_hpo.data import Dataset
from lenet_hpo.errors import ConfigError, StudyError
from lenet_hpo.files import atomic_write_text, check_output_dir
from lenet_hpo.final import FinalRun, RunCache, correctness, named_config, train_final
from lenet_hpo.model import build_model, count_macs
from lenet_hpo.notebook import RetrainDisplay, wants_display
from lenet_hpo.search.pruning import check_noise
from lenet_hpo.search.space import StudySpec, config_from_params
from lenet_hpo.search.storage import mask_url
from lenet_hpo.search.studies import StoredStudy, best_trials, open_study, retrain_dir
from lenet_hpo.sequential import FIRST_LOOK, Look, Stopping, look
from lenet_hpo.stats import (
    BootstrapResult,
    Comparison,
    compare,
    interval,
    paired_bootstrap,
    summarize,
    with_test_set,
)
from lenet_hpo.training import EpochStats, resolve_device, resolve_precision, train

RESCORE_SEED_BASE = 1000  # --top-k re-scoring seeds: disjoint from the retraining seeds 0..n-1


@dataclass(frozen=True)
class EpochDone:
    """One epoch of one run finished (progress)."""

    role: str  # "best", a baseline, or "trial N" while re-scoring
    seed: int
    epoch: int
    epochs: int
    seconds: float


OnEpochDone = Callable[[EpochDone], None]
OnRun = Callable[[FinalRun], None]
OnLook = Callable[[Look], None]


@dataclass(frozen=True)
class ModelResult:
    """One model (the tuned one or a baseline) over all seeds."""

    config: dict[str, Any]
    seeds: list[int]
    test_accuracy: list[float]
    mean: float
    std: float
    ci95: list[float]
    params: int
    macs: int
    seconds_per_epoch: float
    precision: str
    checkpoints: list[str]
    sources: list[str] = field(default_factory=list)  # per seed: trained, reused or cached

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Selection:
    """Which trial is retrained: the best COMPLETE one, or with top_k > 1 the best of the
    top k re-scored on fresh seeds (validation split)."""

    trial: int
    search_value: float
    config: TrialConfig
    top_k: int = 1
    rescored: list[dict[str, Any]] = field(default_factory=list)
    tied: list[dict[str, Any]] = field(default_factory=list)  # trials that tied with the best (cheapest_tied)


@dataclass(frozen=True)
class RetrainResult:
    """retrain-best's result: every model over its seeds, the comparisons, how the seeds were
    decided; shows itself in a notebook (verdict, p, intervals, per-model and per-seed tables)."""

    study: str
    trial: int
    search_value: float
    top_k: int
    rescored: list[dict[str, Any]]
    epochs: int
    n_seeds: int
    dataset: dict[str, Any]
    models: dict[str, ModelResult]  # "best", then each baseline in the order asked
    comparisons: dict[str, Comparison]  # baseline -> the tuned model against it
    results_csv: str
    # The verdict's bootstrap replicates (tuned minus the first baseline), kept for its figure;
    # empty where the runs' test predictions were not kept.
    test_set_differences: tuple[float, ...] = ()
    tied: list[dict[str, Any]] = field(default_factory=list)  # trials tied with the best; the cheapest was taken
    source: dict[str, Any] | None = None  # the study it came from (`StoredStudy.identity`)
    stopping: Stopping | None = None  # the looks after each seed pair and why the runs stopped

    @property
    def baselines(self) -> list[str]:
        return list(self.comparisons)

    @property
    def difference(self) -> Comparison:
        """The comparison with the first baseline: the verdict."""
        return self.comparisons[self.baselines[0]]

    @property
    def test_set(self) -> BootstrapResult | None:
        """The verdict's test-set statistics, as retrain-best computed them (None: not available)."""
        if not self.test_set_differences:
            return None
        return BootstrapResult.from_comparison(self.difference, self.test_set_differences)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`--json`, summary.json): each model under its role, and the first
        comparison again as `difference`."""
        keys = ("study", "source", "trial", "search_value", "top_k", "rescored", "tied", "epochs")
        head = {k: getattr(self, k) for k in keys}
        return {
            **head,
            "n_seeds": self.n_seeds,
            "dataset": self.dataset,
            **{role: m.to_dict() for role, m in self.models.items()},
            "results_csv": self.results_csv,
            "difference": self.difference.to_dict(),
            "comparisons": {name: c.to_dict() for name, c in self.comparisons.items()},
            "stopping": self.stopping.to_dict() if self.stopping else None,
        }

    def to_frame(self) -> pd.DataFrame:
        """Test accuracy per seed (rows) and model (columns), and the tuned model's difference
        with the first baseline in points."""
        frame = pd.DataFrame({role: pd.Series(m.test_accuracy, index=m.seeds) for role, m in self.models.items()})
        frame.index.name = "seed"
        frame[f"best - {self.baselines[0]} (points)"] = 100 * (frame["best"] - frame[self.baselines[0]])
        return frame

    def models_frame(self) -> pd.DataFrame:
        """One row per model: mean test accuracy, its spread and 95% interval, size and speed."""
        rows = [{"model": role, "mean": m.mean, "std": m.std, "ci95 low": m.ci95[0], "ci95 high": m.ci95[1],
                 "params": m.params, "MACs": m.macs, "s / epoch": m.seconds_per_epoch, "seeds": len(m.seeds)}
                for role, m in self.models.items()]
        return pd.DataFrame(rows).set_index("model")

    def __repr__(self) -> str:
        d = self.difference
        return (f"RetrainResult(study {self.study!r}, trial {self.trial} vs {self.baselines[0]}:"
                f" {100 * d.difference:+.2f} points, p = {d.p_value:.2g},"
                f" {self.n_seeds} seed pairs x {self.epochs} epochs)")

    def _repr_html_(self) -> str:
        d = self.difference
        parts = [f"<div><p><b>{html.escape(d.verdict[0].upper() + d.verdict[1:])}.</b></p>",
                 f"<p>{html.escape(d.test)}: p = {d.p_value:.2g}; 95% CI over seeds"
                 f" {interval(d.ci95, signed=True)} points"
                 + (f"; with test-set noise {interval(d.test_set_ci95, signed=True)} points" if d.test_set_ci95 else "")
                 + (f"; P(tuned more accurate) {d.prob_improvement:.1%}" if d.prob_improvement is not None else "")
                 + "</p>"]
        if self.stopping is not None:
            parts.append(f"<p>Seeds: {html.escape(self.stopping.reason())}.</p>")
        parts += [self.models_frame().to_html(border=0, float_format=lambda v: f"{v:.4f}"),
                  self.to_frame().to_html(border=0, float_format=lambda v: f"{v:.4f}"), "</div>"]
        return "".join(parts)

    def record(self) -> dict[str, Any]:
        """What summary.json keeps: the JSON form and the bootstrap's replicates."""
        return {**self.to_dict(), "test_set_differences": list(self.test_set_differences)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrainResult:
        roles = ["best", *d["comparisons"]]
        fields = ModelResult.__dataclass_fields__
        return cls(
            study=d["study"],
            trial=d["trial"],
            search_value=d["search_value"],
            top_k=d["top_k"],
            rescored=d.get("rescored", []),
            tied=d.get("tied", []),
            epochs=d["epochs"],
            n_seeds=d["n_seeds"],
            dataset=d["dataset"],
            models={r: ModelResult(**{k: v for k, v in d[r].items() if k in fields}) for r in roles},
            comparisons={name: Comparison.from_dict(c) for name, c in d["comparisons"].items()},
            results_csv=d["results_csv"],
            test_set_differences=tuple(d.get("test_set_differences", ())),
            source=d.get("source"),
            stopping=Stopping.from_dict(d["stopping"]) if d.get("stopping") else None,
        )


def select_best(
    study: optuna.Study,
    spec: StudySpec,
    data: Dataset,
    *,
    top_k: int,
    seeds: int,
    device: torch.device,
    precision: str,
    cheapest: bool = True,
    on_epoch: OnEpochDone | None = None,
) -> Selection:
    """The trial to retrain: the best COMPLETE one (with `cheapest`, the one of fewest MACs
    among those that tie with it, `cheapest_tied`), or with top_k > 1 the one whose config
    has the best mean validation accuracy on `seeds` fresh seeds."""
    if top_k == 1:
        t, tied = cheapest_tied(study, len(data.val)) if cheapest else (best_trials(study)[0], [])
        return Selection(t.number, t.values[0], config_from_params(t.params, spec), tied=tied)
    candidates = best_trials(study, k=top_k)
    rows = []
    for t in candidates:
        cfg = config_from_params(t.params, spec)
        accs = []
        for s in range(seeds):
            run_cfg = cfg.replace(seed=RESCORE_SEED_BASE + s)
            report = _reporter(on_epoch, f"trial {t.number}", run_cfg)
            result = train(run_cfg, data, device=device, precision=precision, on_epoch=report)
            accs.append(result.history[-1].eval_acc)
        rows.append(
            {"trial": t.number, "search_value": t.values[0], "rescored_mean": statistics.fmean(accs), "rescored": accs}
        )
    chosen = max(rows, key=lambda r: r["rescored_mean"])
    t = next(t for t in candidates if t.number == chosen["trial"])
    return Selection(t.number, t.values[0], config_from_params(t.params, spec), top_k, rows)


def cheapest_tied(study: optuna.Study, val_images: int) -> tuple[FrozenTrial, list[dict[str, Any]]]:
    """Of the COMPLETE trials that tie with the best (their validation accuracy, on `val_images`
    images, within one standard error of the difference, `check_noise`), the one with the
    fewest multiply-accumulates: it trains fastest and the check cannot tell them apart.
    Returns it and the tied trials, best first."""
    ranked = best_trials(study, k=len(study.trials))
    top = ranked[0].values[0]
    tied = [t for t in ranked if top - t.values[0] <= check_noise(top, t.values[0], val_images)]
    chosen = min(tied, key=lambda t: (t.user_attrs.get("macs", math.inf), t.number))
    rows = [{"trial": t.number, "value": t.values[0], "macs": t.user_attrs.get("macs"),
             "params": t.user_attrs.get("params")} for t in tied]
    return chosen, rows if len(tied) > 1 else []


def _reporter(on_epoch: OnEpochDone | None, role: str, cfg: TrialConfig) -> Callable[[EpochStats], None] | None:
    if on_epoch is None:
        return None
    return lambda e: on_epoch(EpochDone(role, cfg.seed, e.epoch, cfg.epochs, e.seconds))


# --- running the trainings, here or in worker processes -----------------------------------------


@dataclass(frozen=True)
class Job:
    """One final run: a role's config on one seed, and where and how it runs (picklable)."""

    role: str  # "best" or a baseline's name
    config: TrialConfig  # with its seed and the epoch budget
    out: Path  # the study's retrain folder
    device: str
    precision: str
    meta: dict[str, Any]  # recorded in the checkpoint
    cached: bool  # may come from the shared run cache (baselines)

    @property
    def path(self) -> Path:
        return self.out / f"{self.role}-seed{self.config.seed}.pt"


def run_job(job: Job, data: Dataset, on_epoch: OnEpochDone | None = None) -> FinalRun:
    """Train (or reuse) one final run."""
    return train_final(
        job.config, data, job.path, role=job.role, device=job.device, precision=job.precision, meta=job.meta,
        cache=RunCache() if job.cached else None, on_epoch=_reporter(on_epoch, job.role, job.config),
    )


# The look after 2 pairs has one degree of freedom: at its level (0.0019 of 5% with 5 pairs) it
# settles only when the two differences lie within 1/170 of their mean of each other.  So the
# first three pairs are scheduled as one group, which keeps both cores busy until the first look
# that counts.
FIRST_GROUP = 3


def _in_order(jobs: list[Job], data: Dataset) -> list[Job]:
    """The order runs start in: the first FIRST_GROUP seed pairs as one group, then pair by pair;
    within a group, runs already done (reused or cached: their lines come at once) first, then
    the longest first (MACs per image as the measure), so the slow runs never start last."""
    macs: dict[str, int] = {}
    cache = RunCache()

    def cost(job: Job) -> int:
        if job.role not in macs:
            model = build_model(job.config, in_channels=data.channels, num_classes=data.num_classes)
            macs[job.role] = count_macs(model, data.channels)
        return macs[job.role]

    def done(job: Job) -> bool:
        if job.path.exists():
            return True
        dev = torch.device(job.device)
        precision = resolve_precision(job.precision, job.config, dev)
        return job.cached and cache.has(cache.key(job.config, data, precision, dev))

    return sorted(jobs, key=lambda j: (max(j.config.seed, FIRST_GROUP - 1), not done(j), -cost(j), j.config.seed))


class Abandoned(Exception):
    """A run that the verdict no longer needs (it settled on fewer seed pairs)."""


_WORKER: dict[str, Any] = {}  # in a worker process: its data, its progress queue and the seeds still needed


def _init_worker(spec: StudySpec, data_dir: Path | None, threads: int, events: Any, needed: Any) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(data=spec.load_data(data_dir), events=events, needed=needed)  # moved to a GPU by train()


def _run_in_worker(job: Job) -> FinalRun:
    def on_epoch(e: EpochDone) -> None:
        _WORKER["events"].put(e)
        if job.config.seed >= _WORKER["needed"].value:
            raise Abandoned(job.path.name)

    return run_job(job, _WORKER["data"], on_epoch)


class _Runs:
    """The runs of the seed pairs in seed order, with a look after each complete pair."""

    def __init__(self, jobs: list[Job], on_pair: Callable[[list[FinalRun]], bool], done: OnRun) -> None:
        self.groups: dict[int, list[Job]] = {}
        for job in jobs:
            self.groups.setdefault(job.config.seed, []).append(job)
        self.finished: dict[int, list[FinalRun]] = {s: [] for s in self.groups}
        self.on_pair, self.done = on_pair, done
        self.looked = 0  # seed pairs looked at
        self.stopped = False

    def add(self, run: FinalRun) -> None:
        """A finished run; looks at every pair that it completes, in order, until one settles."""
        self.done(run)
        self.finished[run.seed].append(run)
        while not self.stopped and self.looked < len(self.groups):
            seed = sorted(self.groups)[self.looked]
            if len(self.finished[seed]) < len(self.groups[seed]):
                return
            self.looked += 1
            self.stopped = self.on_pair(self.kept())

    def kept(self) -> list[FinalRun]:
        """The runs of the pairs looked at (a pair finished after the settling look is not used)."""
        return [r for s in sorted(self.groups)[: self.looked] for r in self.finished[s]]


def _run_here(jobs: list[Job], data: Dataset, on_epoch: OnEpochDone | None, runs: _Runs) -> None:
    for job in jobs:
        if runs.stopped:
            return
        runs.add(run_job(job, data, on_epoch))


def _run_in_pool(
    jobs: list[Job], spec: StudySpec, data_dir: Path | None, workers: int, on_epoch: OnEpochDone | None, runs: _Runs
) -> None:
    """`workers` processes, each loading the data once; epochs are reported through a queue.

    Jobs start in `_in_order`'s order, at most one pair ahead of the pairs looked at (the
    first group at once), so no core idles while a pair's slower run finishes; when a look
    settles, runs of later seeds stop at their next epoch end and those not started are dropped."""
    ctx = multiprocessing.get_context("spawn")
    events, needed = ctx.Queue(), ctx.Value("i", 1 << 30)
    init = (spec, data_dir, max(1, (os.cpu_count() or 1) // workers), events, needed)
    seeds = sorted(runs.groups)
    todo = list(jobs)

    def drain() -> None:
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                return
            if on_epoch is not None:
                on_epoch(event)

    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
        pending: set[Future[FinalRun]] = set()
        while pending or (todo and not runs.stopped):
            ahead = seeds[min(max(runs.looked + 1, FIRST_GROUP - 1), len(seeds) - 1)]
            while todo and not runs.stopped and len(pending) < workers and todo[0].config.seed <= ahead:
                pending.add(pool.submit(_run_in_worker, todo.pop(0)))
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            drain()
            for future in finished:
                try:
                    run = future.result()
                except Abandoned:
                    continue
                if not runs.stopped:
                    runs.add(run)
                if runs.stopped:
                    needed.value = seeds[runs.looked] if runs.looked < len(seeds) else 1 << 30
    drain()


def _model_result(table: pd.DataFrame, role: str, cfg: TrialConfig) -> ModelResult:
    rows = table[table.role == role].sort_values("seed")
    s = summarize(rows.test_accuracy.tolist())
    return ModelResult(
        config=cfg.to_dict(),
        seeds=rows.seed.tolist(),
        test_accuracy=rows.test_accuracy.tolist(),
        mean=s.mean,
        std=s.std,
        ci95=list(s.ci95),
        params=int(rows.params.iloc[0]),
        macs=int(rows.macs.iloc[0]),
        seconds_per_epoch=float(rows.seconds_per_epoch.median()),
        precision=str(rows.precision.iloc[0]),
        checkpoints=rows.checkpoint.tolist(),
        sources=rows.source.tolist(),
    )


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
    data_dir: Path | None = None,
    studies_dir: Path | None = None,
    use_cache: bool = True,
    cheapest: bool = True,
    early_stop: bool = True,
    on_epoch: OnEpochDone | None = None,
    on_run: OnRun | None = None,
    on_look: OnLook | None = None,
    progress: bool | None = None,
) -> RetrainResult:
    """Retrain the selected trial and the baseline(s) on seed pairs; return the comparison.

    Seeds 0, 1, ... are trained a pair at a time (the tuned model and every baseline on one
    seed); after each pair the comparison with the first baseline is looked at
    (`sequential.look`, reported to `on_look`), and with `early_stop` the runs stop at the
    first settled look.  `seeds` is the most pairs; `early_stop=False` trains them all.
    `epochs` defaults to the study's `retrain_epochs`, else the first baseline's epochs
    (20 for BASELINE), used for all.
    `precision` (auto, fp32, bf16) defaults to the study's; every run uses it.
    `workers` runs that many trainings at once in separate processes, each with
    cores / workers threads (default: one per core on a CPU, one on a GPU).
    `use_cache`: take baseline runs from the shared run cache when they are there.
    `cheapest`: of the trials that tie with the best within the validation check's noise,
    retrain the one of fewest MACs (`cheapest_tied`); False: the best by value alone.
    `progress`: draw a live display in a Jupyter notebook (None: there, when no callbacks
    are given; `lenet_hpo.notebook`).
    """
    if seeds < 2:
        raise ConfigError("seeds: need at least 2 to estimate an interval")
    epoch_budget(baselines, epochs)  # unknown baselines fail before the study is opened
    base_cfgs = {name: named_config(name) for name in baselines}
    stored = open_study(study_name, url)
    study, spec = stored.study, stored.spec()
    budget = epoch_budget(baselines, epochs or spec.retrain_epochs)
    dev = resolve_device(device)
    precision = precision or spec.precision
    out = check_output_dir(retrain_dir(stored, studies_dir), "retrain folder")
    data = spec.load_data(data_dir)
    chosen = select_best(
        study, spec, data, top_k=top_k, seeds=seeds, device=dev, precision=precision, cheapest=cheapest,
        on_epoch=on_epoch,
    )
    for cfg in (chosen.config, *base_cfgs.values()):
        resolve_precision(precision, cfg, dev)  # an impossible precision fails before the first run
    roles = {role: cfg.replace(epochs=budget) for role, cfg in {"best": chosen.config, **base_cfgs}.items()}
    meta = {"trial": chosen.trial, "study": study_name}
    jobs = _in_order([Job(role, cfg.replace(seed=s), out, str(dev), precision, meta, use_cache and role != "best")
                      for s in range(seeds) for role, cfg in roles.items()], data)
    out.mkdir(parents=True, exist_ok=True)
    if wants_display(progress, on_epoch, on_run, on_look):
        view = RetrainDisplay(seeds * len(roles) * budget, budget)
        on_epoch, on_run, on_look = view.on_epoch, view.on_run, view.on_look
    else:
        view = None
    try:
        return _retrain(stored, spec, chosen, roles, jobs, data, data_dir, out, seeds, dev, workers, early_stop,
                        on_epoch, on_run, on_look)
    finally:
        if view is not None:
            view.close()


def _retrain(
    stored: StoredStudy, spec: StudySpec, chosen: Selection, roles: dict[str, TrialConfig], jobs: list[Job],
    data: Dataset, data_dir: Path | None, out: Path, seeds: int, dev: torch.device, workers: int | None,
    early_stop: bool, on_epoch: OnEpochDone | None, on_run: OnRun | None, on_look: OnLook | None,
) -> RetrainResult:
    """The seed pairs, a look after each, until settled or all are done; then the result."""
    first = list(roles)[1]
    looks: list[Look] = []

    def on_pair(kept: list[FinalRun]) -> bool:
        """After each complete seed pair: the verdict so far; True when it is settled."""
        acc = {(r.role, r.seed): r.test_accuracy for r in kept}
        pairs = sorted({r.seed for r in kept})
        if len(pairs) < FIRST_LOOK:
            return False
        looks.append(look([acc["best", s] - acc[first, s] for s in pairs], seeds))
        if on_look is not None:
            on_look(looks[-1])
        return early_stop and looks[-1].settled

    runs = _Runs(jobs, on_pair, lambda run: on_run(run) if on_run is not None else None)
    n_workers = min(len(jobs), workers or (1 if dev.type != "cpu" else os.cpu_count() or 1))
    if n_workers == 1:
        _run_here(jobs, data, on_epoch, runs)
    else:
        _run_in_pool(jobs, spec, data_dir, n_workers, on_epoch, runs)
    stopping = Stopping(early_stop, seeds, tuple(looks))
    return _conclude(stored, chosen, roles, runs.kept(), out, data, stopping)


def epoch_budget(baselines: tuple[str, ...], epochs: int | None = None) -> int:
    """The epochs of every final run: `epochs`, else the first baseline's (20 for BASELINE);
    unknown or missing baselines fail here, before any training."""
    if not baselines:
        raise ConfigError("baselines: name at least one (e.g. baseline or classic)")
    configs = [named_config(name) for name in baselines]
    return epochs or configs[0].epochs


def comparison(tuned: ModelResult, base: ModelResult, name: str) -> tuple[Comparison, BootstrapResult | None]:
    """The tuned model against one baseline: the paired t-test over seeds, and with the runs'
    test predictions the test-set statistics too (None where they were not kept)."""
    names = ("the tuned model", f"the {name}")
    c = compare(tuned.test_accuracy, base.test_accuracy, paired=True, names=names)
    right = (correctness(tuned.checkpoints), correctness(base.checkpoints))
    if right[0] is None or right[1] is None:
        return c, None
    test_set = paired_bootstrap(right[0], right[1], tuned.seeds)
    return with_test_set(c, test_set, names), test_set


def _conclude(
    stored: StoredStudy, chosen: Selection, roles: dict[str, TrialConfig], runs: list[FinalRun], out: Path,
    data: Dataset, stopping: Stopping,
) -> RetrainResult:
    """Tables, statistics and the result, written to results-<digest>.csv and summary.json.

    A result set is the summary and the table it names: the table goes under a name of its
    own content, the summary (written whole, last) names it, and only then are earlier
    tables removed, so a reader (or a crash) sees one set or the other, never a mix."""
    table = pd.DataFrame([r.to_dict() for r in runs]).sort_values(["seed", "role"], kind="stable")
    csv = table.to_csv(index=False)
    results = out / f"results-{hashlib.sha256(csv.encode()).hexdigest()[:12]}.csv"
    atomic_write_text(results, csv)
    models = {role: _model_result(table, role, cfg) for role, cfg in roles.items()}
    compared = {name: comparison(models["best"], models[name], name) for name in list(roles)[1:]}
    test_set = next(iter(compared.values()))[1]
    result = RetrainResult(
        study=stored.study.study_name,
        trial=chosen.trial,
        search_value=chosen.search_value,
        top_k=chosen.top_k,
        rescored=chosen.rescored,
        tied=chosen.tied,
        epochs=roles["best"].epochs,
        n_seeds=len({r.seed for r in runs}),
        dataset=data.meta(),
        models=models,
        comparisons={name: c for name, (c, _) in compared.items()},
        results_csv=str(results),
        test_set_differences=tuple(test_set.differences.tolist()) if test_set is not None else (),
        source=stored.identity,
        stopping=stopping,
    )
    atomic_write_text(out / "summary.json", json.dumps(result.record(), indent=2))
    for old in out.glob("results*.csv"):
        if old != results:
            old.unlink(missing_ok=True)
    return result


def load_result(stored: StoredStudy, studies_dir: Path | None = None) -> RetrainResult:
    """The retrain-best result of exactly this study; another study's (same name, other storage
    or made again) is refused."""
    path = retrain_dir(stored, studies_dir) / "summary.json"
    name = stored.study.study_name
    if not path.exists():
        raise StudyError(
            f"no retrain results for study {name!r} in {mask_url(stored.url)} ({path});"
            f" run `python -m lenet_hpo retrain-best --study {name}` first (with the same --storage)"
        )
    result = RetrainResult.from_dict(json.loads(path.read_text()))
    stored.check_outputs(result.source, path)
    return result
