"""The search: an Optuna study over `suggest_config`, trained by the shared `train()`.

Budget semantics: `n_trials` is the study-wide number of finished trials
(COMPLETE + PRUNED) across all workers, machines and runs.  A worker claims a
trial under a study-wide lock (`ClaimLock`) only while finished + running trials
are fewer than `n_trials`, so the study ends with exactly `n_trials`, and a
rerun after an interruption runs only the remainder.  A worker that dies
mid-trial is detected by its missing heartbeats; its trial is failed and its
params retried.  A worker that dies while claiming (before its trial's first
heartbeat) leaves a RUNNING trial without the `claimed` mark; the next claim
fails it.  A worker outlives a dropped database connection: it reconnects and
goes on (`RECOVERABLE`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import multiprocessing
import os
import platform
import signal
import socket
import sys
import threading
import time
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
import torch
from optuna.trial import FrozenTrial, TrialState

from lenet_hpo.config import BASELINE, TrialConfig
from lenet_hpo.data import Dataset, load_data
from lenet_hpo.errors import StorageError, StudyError
from lenet_hpo.model import build_model, count_macs
from lenet_hpo.space import StudySpec, load_spec, params_for, suggest_config
from lenet_hpo.storage import DEFAULT_HEARTBEAT, ClaimLock, Heartbeat, mask_url, open_storage
from lenet_hpo.train import EpochStats, resolve_device, resolve_precision, train

log = logging.getLogger(__name__)
# fail_stale_trials and RetryFailedTrialCallback are marked experimental; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 1.0
MAX_STORAGE_RETRIES = 8  # consecutive failed rounds (backoff 1, 2, 4 ... 30 s) before a worker gives up


class ClaimLostError(StorageError):
    """The claim lock's connection dropped while this worker was claiming a trial."""


# What a worker outlives: a dropped connection (SQLAlchemy, or Optuna wrapping it), a
# lost claim lock, or its trial failed by another worker after missed heartbeats.
RECOVERABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.SQLAlchemyError,
    optuna.exceptions.StorageInternalError,
    optuna.exceptions.UpdateFinishedTrialError,
    ClaimLostError,
)


@dataclass(frozen=True)
class SearchSummary:
    study: str
    storage: str  # masked
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    n_running: int
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_config: dict[str, Any] | None
    baseline_value: float | None
    seconds: float
    workers: int
    threads_per_worker: int
    pareto: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "optuna", "sqlalchemy", "lenet-hpo"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            from lenet_hpo import __version__

            out[pkg] = __version__ if pkg == "lenet-hpo" else "not installed"
    return out


def load_spec_data(spec: StudySpec, data_dir: Any = None) -> Dataset:
    return load_data(
        spec.dataset,
        data_dir=data_dir,
        val_size=spec.val_size,
        split_seed=spec.split_seed,
        resize=spec.resize,
        train_limit=spec.train_limit,
    )


def prepare_study(spec: StudySpec, url: str, data: Dataset, *, heartbeat: Heartbeat, sampler_seed: int | None = None) -> optuna.Study:
    """Create the study (or load it, checking it was made from the same file and data),
    record what makes it reproducible, and enqueue BASELINE when it lies in the space.
    Under the claim lock, so searches started at the same moment on several machines
    create the study and its baseline trial once."""
    storage = open_storage(url, heartbeat=heartbeat)
    lock = ClaimLock(url, spec.name)
    try:
        lock.acquire()
        return _prepare(spec, url, storage, data, sampler_seed)
    finally:
        lock.close()


def _same_settings(stored: str | None, text: str) -> bool:
    """Whether a study created from `stored` may go on with the file `text`: the same settings (comments may differ)."""
    if stored is None or stored == text:
        return True
    try:
        return tomllib.loads(stored) == tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False


def _prepare(spec: StudySpec, url: str, storage: optuna.storages.BaseStorage, data: Dataset, sampler_seed: int | None) -> optuna.Study:
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if spec.name in existing:
        attrs = existing[spec.name].user_attrs
        if not _same_settings(attrs.get("study_file"), spec.text):
            raise StudyError(
                f"study {spec.name!r} in {mask_url(url)} was created from a different version of {spec.path};"
                " restore that file, or give the changed file another name to start a new study"
            )
        if attrs.get("data", {}).get("checksum") not in (None, data.checksum):
            raise StudyError(f"study {spec.name!r} was run on other data (checksum differs); use a new study name")
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=spec.directions,
        load_if_exists=True,
        sampler=spec.make_sampler(0 if sampler_seed is None else sampler_seed),
        pruner=spec.make_pruner(),
    )
    if spec.name not in existing:
        study.set_user_attr("study_file", spec.text)
        study.set_user_attr("data", data.meta())
        study.set_user_attr("objectives", list(spec.objectives))
        study.set_user_attr("versions", package_versions())
        baseline = params_for(BASELINE, spec)
        if baseline is not None:
            study.enqueue_trial(baseline, user_attrs={"role": "baseline"}, skip_if_exists=True)
        log.info("created study %s (baseline %s)", spec.name, "enqueued" if baseline else "outside the space")
    return study


def make_objective(spec: StudySpec, data: Dataset, device: torch.device, on_start: Callable[[optuna.Trial], None]) -> Callable[[optuna.Trial], Any]:
    def objective(trial: optuna.Trial) -> Any:
        on_start(trial)  # the trial is RUNNING: let other workers claim theirs
        cfg = suggest_config(trial, spec)
        model = build_model(cfg, in_channels=data.channels, num_classes=data.num_classes)
        n_params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, data.channels)
        precision = resolve_precision(spec.precision, cfg, device)
        attrs = {"config": cfg.to_dict(), "params": n_params, "macs": macs, "seed": cfg.seed, "device": str(device), "precision": precision}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        history: list[dict[str, float]] = []
        # The enqueued baseline is the study's reference point: it is reported like any
        # trial but never pruned, so the study shows where it stands after the full budget.
        reference = trial.user_attrs.get("role") == "baseline"

        def on_epoch(e: EpochStats) -> None:
            history.append(e.to_dict())
            trial.set_user_attr("history", history)
            trial.set_user_attr("seconds_per_epoch", sum(h["seconds"] for h in history) / len(history))
            if not spec.multi_objective:
                trial.report(e.val_acc, e.epoch)
                if not reference and trial.should_prune():
                    trial.set_user_attr("outcome", "pruned")
                    raise optuna.TrialPruned(f"pruned after epoch {e.epoch} at validation accuracy {e.val_acc:.4f}")

        result = train(cfg, data, device=device, on_epoch=on_epoch, precision=precision)
        if result.outcome == "diverged":
            epoch = len(result.history)
            trial.set_user_attr("outcome", "diverged")
            trial.set_user_attr("fail_reason", f"loss became NaN/inf in epoch {epoch}")
            if spec.multi_objective:
                raise RuntimeError(f"diverged: loss became NaN/inf in epoch {epoch}")
            raise optuna.TrialPruned(f"diverged: loss became NaN/inf in epoch {epoch}")
        trial.set_user_attr("outcome", "completed")
        value = result.history[-1].val_acc
        if spec.multi_objective:
            return value, float(n_params if spec.objectives[1] == "params" else macs)
        return value

    return objective


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def fail_orphans(study: optuna.Study, worker: str | None = None) -> None:
    """Call under the claim lock.  A RUNNING trial without its `claimed` mark was being
    claimed by a worker that died before the trial's first heartbeat, so heartbeats
    will never fail it; since nobody else is claiming now, fail it here.  With
    `worker`, also fail the trials that worker claimed (it is being interrupted)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("claimed") != t.number or (worker is not None and t.user_attrs.get("worker") == worker):
            log.warning("trial %d was left RUNNING by an interrupted or dead worker: failing it", t.number)
            study.tell(t.number, state=TrialState.FAIL)


def _short(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"


def run_worker(
    spec: StudySpec,
    url: str,
    n_trials: int,
    *,
    data: Dataset | None = None,
    device: str = "auto",
    threads: int | None = None,
    sampler_seed: int | None = None,
    deadline: float | None = None,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
    data_dir: Any = None,
) -> int:
    """Run trials until the study has `n_trials` finished ones (or `deadline`, a
    time.monotonic() value, passes).  Returns the number of trials this worker ran."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    resolve_precision(spec.precision, spec.base_config(), dev)  # an impossible precision fails before any trial
    data = (data if data is not None else load_spec_data(spec, data_dir)).to(dev)
    storage = open_storage(url, heartbeat=heartbeat)
    study = optuna.load_study(
        study_name=spec.name,
        storage=storage,
        sampler=spec.make_sampler(0 if sampler_seed is None else sampler_seed),
        pruner=spec.make_pruner(),
    )
    lock = ClaimLock(url, spec.name)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def on_start(trial: optuna.Trial) -> None:
        storage.record_heartbeat(trial._trial_id)  # from now on a dead worker is caught by heartbeats
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("claimed", trial.number)  # not an orphan (see fail_orphans)
        if not lock.release():
            raise ClaimLostError("the claim lock was lost while starting this trial (database connection dropped): it is failed so that the budget stays exact")

    objective = make_objective(spec, data, dev, on_start=on_start)
    ran = failures = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            if _interrupted.is_set():
                raise KeyboardInterrupt  # the first one was swallowed (by an import inside torch, say)
            try:
                lock.acquire()
                try:
                    optuna.storages.fail_stale_trials(study)  # a dead worker's trial: FAIL, then retried
                    fail_orphans(study)
                    counts = count_states(study)
                    done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
                    if done >= n_trials:
                        break
                    if done + counts[TrialState.RUNNING] >= n_trials:
                        lock.release()  # wait: a running trial may still fail and need a retry
                        time.sleep(POLL_S)
                        continue
                    # The lock is released inside the objective once the trial is RUNNING.
                    study.optimize(objective, n_trials=1, catch=(RuntimeError,), gc_after_trial=False)
                    ran += 1
                except KeyboardInterrupt:
                    # Optuna fails the trial when the interrupt lands in the objective, not when
                    # it lands while claiming or finishing; leave nothing of ours RUNNING.
                    if not lock.held:
                        lock.acquire()
                    fail_orphans(study, worker)
                    raise
                finally:
                    lock.release()
                failures = 0
            except (*RECOVERABLE, ValueError) as exc:
                if isinstance(exc, ValueError) and not str(exc).startswith("Cannot tell a"):
                    raise  # only Optuna's "Cannot tell a FAIL trial": ours was failed by another worker
                failures += 1
                if failures > MAX_STORAGE_RETRIES:
                    raise StorageError(f"worker {worker} gave up after {failures} storage errors in a row (last: {_short(exc)}); check the database, then rerun") from exc
                delay = min(30, 2 ** (failures - 1))
                log.warning("worker %s: %s; retrying in %d s", worker, _short(exc), delay)
                time.sleep(delay)
    finally:
        lock.close()
    return ran


_interrupted = threading.Event()  # set in a worker process by its first SIGINT


def _interrupt_once(signum: int, frame: object) -> None:
    if _interrupted.is_set():
        return  # a second Ctrl-C must not interrupt failing the trial
    _interrupted.set()
    raise KeyboardInterrupt


def _worker_process(kwargs: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, _interrupt_once)
    logging.basicConfig(level=kwargs.pop("log_level"), format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(str(kwargs.pop("spec_path")))
    try:
        run_worker(spec, **kwargs)
    except KeyboardInterrupt:
        # The trial is failed; exit now even if Optuna left a heartbeat thread behind.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def summarize(study: optuna.Study, spec: StudySpec, url: str, n_trials: int, seconds: float, workers: int, threads: int) -> SearchSummary:
    trials = study.get_trials(deepcopy=False)
    counts = dict.fromkeys(TrialState, 0)
    for t in trials:
        counts[t.state] += 1
    best: FrozenTrial | None = None
    pareto: list[dict[str, Any]] = []
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        if spec.multi_objective:
            front = study.best_trials
            pareto = [{"number": t.number, "values": t.values, "params": t.params} for t in front]
            best = max(front, key=lambda t: t.values[0])
        else:
            best = study.best_trial
    baseline = [t for t in complete if t.user_attrs.get("role") == "baseline"]
    return SearchSummary(
        study=spec.name,
        storage=mask_url(url),
        n_trials=n_trials,
        n_complete=counts[TrialState.COMPLETE],
        n_pruned=counts[TrialState.PRUNED],
        n_failed=counts[TrialState.FAIL],
        n_running=counts[TrialState.RUNNING],
        best_number=best.number if best else None,
        best_value=best.values[0] if best else None,
        best_params=dict(best.params) if best else {},
        best_config=best.user_attrs.get("config") if best else None,
        baseline_value=baseline[0].values[0] if baseline else None,
        seconds=seconds,
        workers=workers,
        threads_per_worker=threads,
        pareto=pareto,
    )


class Progress:
    """Polls the storage: one bar for the study, one line per finished trial."""

    def __init__(self, study: optuna.Study, n_trials: int, *, enabled: bool) -> None:
        from tqdm import tqdm

        self.study, self.n_trials, self.enabled = study, n_trials, enabled
        self.reported: set[int] = set()
        self.bar = tqdm(total=n_trials, desc=study.study_name, unit="trial", disable=not enabled, dynamic_ncols=True, file=sys.stderr)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Progress:
        self.poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()
        self.bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - progress must never stop the search
                log.debug("progress poll failed: %s", exc)

    def poll(self) -> None:
        if not self.enabled:
            return
        trials = self.study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in FINISHED]
        for t in sorted(trials, key=lambda t: t.number):
            if t.state.is_finished() and t.number not in self.reported:
                self.reported.add(t.number)
                self.bar.write(trial_line(t), file=sys.stderr)
        self.bar.n = min(len(done), self.n_trials)
        values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE]
        if values:
            self.bar.set_postfix(best=f"{max(values):.4f}", refresh=False)
        self.bar.refresh()


def trial_line(t: FrozenTrial) -> str:
    hist = t.user_attrs.get("history", [])
    secs = sum(h["seconds"] for h in hist)
    role = " (baseline)" if t.user_attrs.get("role") == "baseline" else ""
    if t.state == TrialState.COMPLETE:
        what = f"val_acc {t.values[0]:.4f}" + (f", {t.values[1]:,.0f} {'params' if t.values[1] >= 0 else ''}" if len(t.values) > 1 else "")
    elif t.state == TrialState.PRUNED:
        last = f" at {hist[-1]['val_acc']:.4f}" if hist and hist[-1]["val_acc"] == hist[-1]["val_acc"] else ""
        what = f"{t.user_attrs.get('outcome', 'pruned')} after epoch {len(hist)}{last}"
    else:
        what = t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason", "failed")
    return f"trial {t.number:3d} {t.state.name:8s} {what} ({len(hist)} ep, {secs:.0f} s){role}"


def default_layout(device: torch.device, workers: int | None, threads: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker).  An explicit count wins.  On a CPU the split of
    the cores that trained fastest when measured on this machine (`layout.py`, cached);
    on a GPU several workers share it (one per two cores, at most 4) so its kernels overlap."""
    cores = os.cpu_count() or 1
    if workers is None and threads is None and device.type == "cpu":
        from lenet_hpo.layout import best_cpu_layout

        return best_cpu_layout()
    if workers is None:
        workers = min(4, max(1, cores // 2)) if device.type == "cuda" else max(1, cores // (threads or 1))
    return workers, threads or max(1, cores // workers)


def run_search(
    spec: StudySpec,
    url: str,
    n_trials: int,
    *,
    workers: int | None = None,
    threads: int | None = None,
    timeout: float | None = None,
    sampler_seed: int | None = None,
    device: str = "auto",
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
    data_dir: Any = None,
    progress: bool = True,
) -> SearchSummary:
    """Run (or resume) the study until it has `n_trials` finished trials."""
    start = time.monotonic()
    dev = resolve_device(device)
    n_workers, threads = default_layout(dev, workers, threads)
    data = load_spec_data(spec, data_dir)
    seed = int(spec.sampler.get("seed", 0) or 0) if sampler_seed is None else sampler_seed
    study = prepare_study(spec, url, data, heartbeat=heartbeat, sampler_seed=seed)
    # Distinct sampler seeds per worker and per run, so workers and reruns do not
    # replay each other's random draws.
    run_offset = len(study.get_trials(deepcopy=False))
    deadline = None if timeout is None else start + timeout
    common = {"device": str(dev), "threads": threads, "deadline": None, "heartbeat": heartbeat, "data_dir": data_dir}
    with Progress(study, n_trials, enabled=progress):
        if n_workers == 1:
            run_worker(spec, url, n_trials, data=data, sampler_seed=seed + run_offset, **{**common, "deadline": deadline})
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = []
            for k in range(n_workers):
                kwargs = {
                    **common,
                    "spec_path": str(spec.path),
                    "url": url,
                    "n_trials": n_trials,
                    "sampler_seed": seed + 1000 * (k + 1) + run_offset,
                    "log_level": logging.getLogger().getEffectiveLevel(),
                    # monotonic clocks are per boot: pass the remaining time instead
                    "deadline": None if deadline is None else time.monotonic() + (deadline - time.monotonic()),
                }
                p = ctx.Process(target=_worker_process, args=(kwargs,), name=f"lenet-hpo-worker-{k}")
                p.start()
                procs.append(p)
            try:
                for p in procs:
                    p.join()
            except KeyboardInterrupt:
                # Ctrl-C reaches the workers too, `kill -INT` and `docker stop` only this
                # process: pass it on (a worker ignores a second one), then let them fail their trials.
                for p in procs:
                    if p.is_alive() and p.pid is not None:
                        os.kill(p.pid, signal.SIGINT)
                for p in procs:
                    p.join(timeout=30)
                raise
            if any(p.exitcode == 130 for p in procs):
                raise KeyboardInterrupt  # a worker was interrupted on its own (kill -INT to it)
            failed = [p.name for p in procs if p.exitcode not in (0, None)]
            if failed and count_states(study)[TrialState.COMPLETE] + count_states(study)[TrialState.PRUNED] < n_trials:
                raise StudyError(f"worker(s) {', '.join(failed)} exited with an error; run with -v for details, then rerun to finish the study")
    return summarize(study, spec, url, n_trials, time.monotonic() - start, n_workers, threads)


def get_study(study_name: str, url: str) -> optuna.Study:
    """Load an existing study; a clear error lists the studies that do exist."""
    storage = open_storage(url, heartbeat=None, create=False)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    if study_name not in names:
        raise StudyError(f"no study {study_name!r} in {mask_url(url)} (studies there: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=storage)


def best_trials(study: optuna.Study, k: int = 1) -> list[FrozenTrial]:
    """The k best COMPLETE trials by validation accuracy; a clear error when there are none."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not trials:
        counts = count_states(study)
        raise StudyError(
            f"study {study.study_name!r} has no completed trial ({counts[TrialState.PRUNED]} pruned,"
            f" {counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running); run"
            f" `python -m lenet_hpo search --study {study.study_name}` until one completes"
        )
    return sorted(trials, key=lambda t: (-t.values[0], t.number))[:k]


def config_of(trial: FrozenTrial) -> TrialConfig:
    return TrialConfig.from_dict(trial.user_attrs["config"])
