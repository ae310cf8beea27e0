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

Nothing here prints: progress reaches the caller through `on_event` (each finished
or retried trial) and `on_progress` (the study's state, about once a second).
"""

from __future__ import annotations

import hashlib
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from lenet_hpo import __version__
from lenet_hpo.acquire import default_data_dir
from lenet_hpo.config import BASELINE, TrialConfig
from lenet_hpo.data import Dataset, split_digest
from lenet_hpo.errors import LenetHpoError, StorageError, StudyError, experimental_used_knowingly
from lenet_hpo.folders import what_changed
from lenet_hpo.layout import best_cpu_layout
from lenet_hpo.model import build_model, count_macs
from lenet_hpo.space import StudySpec, load_spec, params_for, params_in_space, suggest_config, trial_seed
from lenet_hpo.storage import DEFAULT_HEARTBEAT, ClaimLock, Heartbeat, mask_url, open_storage
from lenet_hpo.studies import best_trials, count_states, open_study, study_record, write_record
from lenet_hpo.train import EpochStats, resolve_device, resolve_precision, train

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 1.0
STEP_UNIT = "images"  # what a trial's steps count: training images seen (recorded in every study)
MAX_STORAGE_RETRIES = 8  # consecutive failed rounds (backoff 1, 2, 4 ... 30 s) before a worker gives up


class ClaimLostError(StorageError):
    """The claim lock's connection dropped while this worker was claiming a trial."""


# What a worker outlives: a dropped connection (SQLAlchemy, or Optuna wrapping it), a
# lost claim lock, or its trial failed by another worker after missed heartbeats.
RECOVERABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
    optuna.exceptions.UpdateFinishedTrialError, ClaimLostError,
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
        return asdict(self)


@dataclass(frozen=True)
class TrialEvent:
    """A trial that finished ("complete", "pruned", "failed") or was started again with a
    failed trial's params ("retried")."""

    kind: str
    trial: FrozenTrial


@dataclass(frozen=True)
class Progress:
    finished: int  # COMPLETE + PRUNED
    total: int  # the study-wide budget
    running: int
    failed: int
    best_value: float | None
    seconds: float  # since this search started


OnEvent = Callable[[TrialEvent], None]
OnProgress = Callable[[Progress], None]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "optuna", "sqlalchemy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["lenet-hpo"] = __version__
    return out


# --- creating or resuming a study ----------------------------------------------------------


@dataclass(frozen=True)
class WarmStart:
    """Start a study from the best finished trials of another (`search --warm-start`)."""

    study: str
    url: str  # its storage
    top: int = 5


def prepare_study(
    spec: StudySpec, url: str, data: Dataset, *, heartbeat: Heartbeat, sampler_seed: int | None = None,
    data_dir: Path | None = None, warm: WarmStart | None = None,
) -> optuna.Study:
    """Create the study (or load it, checking it was made from the same file and data),
    record what makes it reproducible, and enqueue BASELINE when it lies in the space, then
    the warm start's trials.  Under the claim lock, so searches started at the same moment
    on several machines create the study, its baseline and warm-start trials once."""
    source = best_trials(open_study(warm.study, warm.url).study, k=warm.top) if warm else []  # errors before writing
    storage = open_storage(url, heartbeat=heartbeat)
    lock = ClaimLock(url, spec.name)
    try:
        lock.acquire()
        record = study_record(storage, spec.name)
        if record:
            _check_resumable(spec, url, storage, data, data_dir, record)
            earlier = record.get("warm_start", {}).get("study")
            if warm and earlier not in (None, warm.study):
                raise StudyError(f"study {spec.name!r} was warm-started from {earlier!r} already")
        study = optuna.create_study(
            study_name=spec.name, storage=storage, directions=spec.directions, load_if_exists=True,
            sampler=spec.make_sampler(sampler_seed), pruner=spec.make_pruner(len(data.train)),
        )
        if not record:
            _record_new_study(study, storage, spec, data)
        if warm and "warm_start" not in record:
            _warm_start(study, storage, spec, warm, source)
        return study
    finally:
        lock.close()


def _same_settings(stored: str | None, text: str) -> bool:
    """Whether a study created from `stored` may go on with the file `text`: the same settings
    (comments may differ)."""
    if stored is None or stored == text:
        return True
    try:
        return tomllib.loads(stored) == tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False


def _check_resumable(
    spec: StudySpec, url: str, storage: optuna.storages.BaseStorage, data: Dataset, data_dir: Path | None,
    record: dict[str, Any],
) -> None:
    """An existing study goes on only from the same settings, on the same data, in the same step unit."""
    if not _same_settings(record.get("study_file"), spec.text):
        raise StudyError(
            f"study {spec.name!r} in {mask_url(url)} was created from a different version of {spec.path};"
            " restore that file, or give the changed file another name to start a new study"
        )
    if record.get("data", {}).get("checksum") not in (None, data.checksum):
        change = _data_change(record["data"], data, data_dir)
        raise StudyError(f"study {spec.name!r} was run on other data: {change}; restore it, or use a new name")
    if record.get("step_unit") != STEP_UNIT and _reported_per_epoch(storage, spec.name):
        raise StudyError(
            f"study {spec.name!r} was created by an older lenet-hpo whose trials reported per epoch, not per"
            " training image; start a new study (another name) or finish this one with that version"
        )


def _record_new_study(
    study: optuna.Study, storage: optuna.storages.BaseStorage, spec: StudySpec, data: Dataset
) -> None:
    """What makes the study reproducible, in full in its system attributes (`studies.study_record`);
    its user attributes, which `optuna studies` and the dashboard show, stay short."""
    subset = data.val_subset(spec.val_subset, spec.split_seed)
    full = {
        "study_file": spec.text,
        "study_dir": str(spec.base),  # where a folder dataset's relative path starts
        "data": data.meta(),
        "val_subset": {"images": len(subset), "seed": spec.split_seed, "sha256": split_digest(subset)},
        "objectives": list(spec.objectives),
        "versions": package_versions(),
        "step_unit": STEP_UNIT,
    }
    for key, value in full.items():
        write_record(storage, spec.name, key, value)
    with experimental_used_knowingly():
        study.set_metric_names(list(spec.objectives))
    name = spec.path.name if spec.path else f"{spec.name}.toml"
    study.set_user_attr("study_file", f"{name} (sha256 {hashlib.sha256(spec.text.encode()).hexdigest()[:12]})")
    study.set_user_attr("dataset", f"{data.name} (checksum {data.checksum[:12]})")
    study.set_user_attr("lenet_hpo", __version__)
    baseline = params_for(BASELINE, spec)
    if baseline is not None:
        study.enqueue_trial(baseline, user_attrs={"role": "baseline"}, skip_if_exists=True)
    log.info("created study %s (baseline %s)", spec.name, "enqueued" if baseline else "outside the space")


def _warm_start(
    study: optuna.Study, storage: optuna.storages.BaseStorage, spec: StudySpec, warm: WarmStart,
    source: list[FrozenTrial],
) -> None:
    """Enqueue the source study's best trials, each with the params that lie in this study's
    space (the others are dropped and named: the sampler draws them anew), and record it."""
    done, skipped, seen = [], [], {}
    for t in source:
        kept, dropped = params_in_space(t.params, spec)
        same = seen.setdefault(tuple(sorted(kept.items())), t.number)
        if same != t.number:  # adapted, it is a trial already enqueued
            skipped.append(f"trial {t.number}: the same as trial {same} without {', '.join(dropped)}")
            continue
        attrs: dict[str, Any] = {"warm_start": f"{warm.study} trial {t.number}"}
        if dropped:
            attrs["warm_start_dropped"] = dropped
        study.enqueue_trial(kept, user_attrs=attrs)
        done.append({"trial": t.number, "value": t.values[0], "params": kept, "dropped": dropped})
    record = {"study": warm.study, "storage": mask_url(warm.url), "trials": done, "skipped": skipped}
    write_record(storage, spec.name, "warm_start", record)
    adapted = sum(bool(d["dropped"]) for d in done)
    extra = (f", {adapted} adapted" if adapted else "") + (f", {len(skipped)} skipped" if skipped else "")
    study.set_user_attr("warm_start", f"{warm.study}: {len(done)} trials{extra}")


def _data_change(stored: dict[str, Any], data: Dataset, data_dir: Path | None) -> str:
    """What differs between the data a study began on and `data`, in words."""
    old, new = stored.get("source", {}), data.source
    if old.get("files_checksum") and new.get("path"):
        changes = what_changed(data_dir or default_data_dir(), new["path"], old["files_checksum"])
        return f"in {new['path']}, {changes}"
    was = f"{stored.get('dataset')!r} (checksum {str(stored.get('checksum'))[:12]}…)"
    return f"it began on {was}, this is {data.name!r} ({data.checksum[:12]}…)"


def _reported_per_epoch(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """Whether a study without a recorded step unit has trials that reported (then per epoch)."""
    study = optuna.load_study(study_name=name, storage=storage)
    return any(t.intermediate_values for t in study.get_trials(deepcopy=False))


# --- one trial --------------------------------------------------------------------------------


class Objective:
    """Train one trial's config, report to Optuna as it trains, and prune when told to.

    A trial's steps are training images seen: it reports at the study's points inside
    epochs (on the fixed validation subset) and after every epoch (on the whole
    validation split, or on the subset before the last epoch with `val_subset_epochs`),
    so pruners can act on fractions of an epoch.  Its value is always the whole
    validation split after its full budget.

    `finished` is the number of the last trial this objective returned a result for:
    if Optuna then refuses to record it, that trial was failed by another worker."""

    def __init__(self, spec: StudySpec, data: Dataset, device: torch.device, on_start: Callable[[optuna.Trial], None]):
        self.spec, self.data, self.device, self.on_start = spec, data, device, on_start
        self.fit_size = len(data.train)
        self.subset = data.val_subset(spec.val_subset, spec.split_seed) if spec.val_subset else None
        self.finished: int | None = None

    def _record(self, trial: optuna.Trial, cfg: TrialConfig, precision: str) -> tuple[int, int]:
        """Set what a trial is (config, size, device, precision) as user attributes; (params, MACs)."""
        model = build_model(cfg, in_channels=self.data.channels, num_classes=self.data.num_classes)
        n_params, macs = sum(p.numel() for p in model.parameters()), count_macs(model, self.data.channels)
        attrs = {"config": cfg.to_dict(), "params": n_params, "macs": macs, "seed": cfg.seed,
                 "device": str(self.device), "precision": precision, "epochs_trained": 0.0, "seconds_trained": 0.0}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return n_params, macs

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.on_start(trial)  # the trial is RUNNING: let other workers claim theirs
        spec = self.spec
        cfg = suggest_config(trial, spec)
        precision = resolve_precision(spec.precision, cfg, self.device)
        n_params, macs = self._record(trial, cfg, precision)
        history: list[dict[str, float]] = []
        # The enqueued baseline is the study's reference point: it is reported like any
        # trial but never pruned, so the study shows where it stands after the full budget.
        # It is no candidate: a violated constraint keeps it out of TPE's good trials (a
        # sampler that learns from it searches the baseline's neighbourhood) and out of
        # study.best_trial.
        reference = trial.user_attrs.get("role") == "baseline"
        if reference:
            trial.set_constraint("reference", 1.0)

        def report(value: float, epochs: float, seconds: float) -> None:
            trial.set_user_attr("epochs_trained", epochs)
            trial.set_user_attr("seconds_trained", seconds)
            if spec.multi_objective:
                return
            trial.report(value, round(epochs * self.fit_size))
            # The baseline's rung results count for the others (should_prune records them), but it goes
            # on; and a trial that trained its whole budget completes, even where a rung falls there.
            if trial.should_prune() and not reference and epochs < cfg.epochs:
                trial.set_user_attr("outcome", "pruned")
                self.finished = trial.number
                raise optuna.TrialPruned(f"pruned after {epochs:g} epochs at validation accuracy {value:.4f}")

        def on_epoch(e: EpochStats) -> None:
            history.append(e.to_dict())
            trial.set_user_attr("history", history)
            trial.set_user_attr("seconds_per_epoch", sum(h["seconds"] for h in history) / len(history))
            report(e.eval_acc, e.epoch, sum(h["seconds"] for h in history))

        result = train(
            cfg, self.data, device=self.device, on_epoch=on_epoch, precision=precision, points=spec.report_points(),
            point_split=self.subset, on_point=lambda p: report(p.acc, p.epoch, p.seconds),
            subset_epochs=spec.val_subset_epochs,
        )
        self.finished = trial.number
        if result.outcome == "diverged":
            epoch = len(result.history)
            trial.set_user_attr("outcome", "diverged")
            trial.set_user_attr("fail_reason", f"loss became NaN/inf in epoch {epoch}")
            if spec.multi_objective:
                raise RuntimeError(f"diverged: loss became NaN/inf in epoch {epoch}")
            raise optuna.TrialPruned(f"diverged: loss became NaN/inf in epoch {epoch}")
        trial.set_user_attr("outcome", "completed")
        value = result.history[-1].eval_acc
        if spec.multi_objective:
            return value, float(n_params if spec.objectives[1] == "params" else macs)
        return value


def next_number(study: optuna.Study) -> int:
    """The number of the trial `study.ask()` gives next: the first enqueued one, else a new one."""
    trials = study.get_trials(deepcopy=False)
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    return min(waiting) if waiting else len(trials)


def fail_orphans(study: optuna.Study, max_retry: int, worker: str | None = None) -> None:
    """Call under the claim lock.  A RUNNING trial without its `claimed` mark was being
    claimed by a worker that died before the trial's first heartbeat, so heartbeats
    will never fail it; since nobody else is claiming now, fail it here.  With
    `worker`, also fail the trials that worker claimed (it is being interrupted).  Then
    the worker's failed trials (Optuna fails the one an interrupt lands in) are retried
    like the heartbeats' (`retry_failed`)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("claimed") != t.number or (worker is not None and t.user_attrs.get("worker") == worker):
            log.warning("trial %d was left RUNNING by an interrupted or dead worker: failing it", t.number)
            study.tell(t.number, state=TrialState.FAIL)
            retry_failed(study, max_retry, t.number)
    if worker is not None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get("worker") == worker:
                retry_failed(study, max_retry, t.number)


def retry_failed(study: optuna.Study, max_retry: int, number: int) -> None:
    """Queue a failed trial's params again, as the heartbeats do for a dead worker's trial, unless
    it has none (it died before drawing them), was queued again already, or ran out of retries."""
    trials = study.get_trials(deepcopy=False)
    failed = next(t for t in trials if t.number == number)
    if not failed.params or any(number in t.system_attrs.get("retry_history", ()) for t in trials):
        return
    with experimental_used_knowingly():
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, failed)


def _short(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"


# --- a worker ---------------------------------------------------------------------------------


class Worker:
    """Claims and runs trials on one study until its budget is reached."""

    def __init__(
        self, spec: StudySpec, url: str, data: Dataset, device: torch.device, heartbeat: Heartbeat,
        sampler_seed: int | None,
    ) -> None:
        self.spec, self.url = spec, url
        self.storage = open_storage(url, heartbeat=heartbeat)
        self.study = optuna.load_study(
            study_name=spec.name,
            storage=self.storage,
            sampler=spec.make_sampler(sampler_seed),
            pruner=spec.make_pruner(len(data.train)),
        )
        self.seed = spec.sampler_seed if sampler_seed is None else sampler_seed
        self.max_retry = heartbeat.max_retry
        self.lock = ClaimLock(url, spec.name)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.objective = Objective(spec, data, device, on_start=self._started)

    def _started(self, trial: optuna.Trial) -> None:
        self.storage.record_heartbeat(trial._trial_id)  # from now on a dead worker is caught by heartbeats
        trial.set_user_attr("worker", self.name)
        trial.set_user_attr("claimed", trial.number)  # not an orphan (see fail_orphans)
        if not self.lock.release():
            raise ClaimLostError(
                "the claim lock was lost while starting this trial (database connection dropped):"
                " it is failed so that the budget stays exact"
            )

    def claim_and_run(self, n_trials: int) -> bool | None:
        """One round under the claim lock: True when a trial ran, False when the budget is
        reached, None when running trials may still need retries (wait and ask again)."""
        self.lock.acquire()
        try:
            with experimental_used_knowingly():
                optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial: FAIL, then retried
            fail_orphans(self.study, self.max_retry)
            counts = count_states(self.study)
            done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
            if done >= n_trials:
                return False
            if done + counts[TrialState.RUNNING] >= n_trials:
                return None  # a running trial may still fail and need a retry
            # Seed the trial's draws by the study's seed and the trial's number (known here: only
            # the lock holder creates trials), so no two processes draw alike.
            self.study.sampler = self.spec.make_sampler(trial_seed(self.seed, next_number(self.study)))
            # The lock is released inside the objective once the trial is RUNNING.
            self.study.optimize(self.objective, n_trials=1, catch=(RuntimeError,), gc_after_trial=False)
            return True
        except KeyboardInterrupt:
            # Optuna fails the trial when the interrupt lands in the objective, not when
            # it lands while claiming or finishing; leave nothing of ours RUNNING.
            if not self.lock.held:
                self.lock.acquire()
            fail_orphans(self.study, self.max_retry, self.name)
            raise
        finally:
            self.lock.release()

    def lost_own_trial(self, exc: Exception) -> bool:
        """Whether `exc` is Optuna refusing a result of ours because another worker had
        already failed that trial (its heartbeats were late)."""
        if isinstance(exc, LenetHpoError) or not isinstance(exc, ValueError) or self.objective.finished is None:
            return False
        number = self.objective.finished
        return any(t.number == number and t.state == TrialState.FAIL for t in self.study.get_trials(deepcopy=False))

    def run(self, n_trials: int, deadline: float | None) -> int:
        """Run trials until the study has `n_trials` finished ones (or `deadline`, a
        time.monotonic() value, passes).  Returns the number of trials this worker ran."""
        ran = failures = 0
        try:
            while deadline is None or time.monotonic() < deadline:
                if _interrupted.is_set():
                    raise KeyboardInterrupt  # the first one was swallowed (by an import inside torch, say)
                try:
                    outcome = self.claim_and_run(n_trials)
                    failures = 0
                except (*RECOVERABLE, ValueError) as exc:
                    if not isinstance(exc, RECOVERABLE) and not self.lost_own_trial(exc):
                        raise
                    failures += 1
                    if failures > MAX_STORAGE_RETRIES:
                        raise StorageError(
                            f"worker {self.name} gave up after {failures} storage errors in a row"
                            f" (last: {_short(exc)}); check the database, then rerun"
                        ) from exc
                    delay = min(30, 2 ** (failures - 1))
                    log.warning("worker %s: %s; retrying in %d s", self.name, _short(exc), delay)
                    time.sleep(delay)
                    continue
                if outcome is False:
                    break
                if outcome is None:
                    time.sleep(POLL_S)
                ran += outcome is True
        finally:
            self.lock.close()
        return ran


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
    data_dir: Path | None = None,
) -> int:
    """One worker in this process (see `Worker.run`)."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    resolve_precision(spec.precision, spec.base_config(), dev)  # an impossible precision fails before any trial
    data = (data if data is not None else spec.load_data(data_dir)).to(dev)
    return Worker(spec, url, data, dev, heartbeat, sampler_seed).run(n_trials, deadline)


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


# --- watching and summing up ------------------------------------------------------------------


def summarize(
    study: optuna.Study, spec: StudySpec, url: str, n_trials: int, seconds: float, workers: int, threads: int
) -> SearchSummary:
    trials = study.get_trials(deepcopy=False)
    counts = count_states(study)
    best: FrozenTrial | None = None
    pareto: list[dict[str, Any]] = []
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    candidates = [t for t in complete if t.user_attrs.get("role") != "baseline"]
    if candidates:
        if spec.multi_objective:
            front = study.best_trials
            pareto = [{"number": t.number, "values": t.values, "params": t.params} for t in front]
            best = max(front, key=lambda t: t.values[0])
        else:
            best = max(candidates, key=lambda t: (t.values[0], -t.number))
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


EVENT_KINDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


class Watcher:
    """Polls the storage in a thread while workers run: an event per finished or retried
    trial, and the study's progress, about once a second."""

    def __init__(self, study: optuna.Study, n_trials: int, on_event: OnEvent | None, on_progress: OnProgress | None):
        self.study, self.n_trials = study, n_trials
        self.on_event, self.on_progress = on_event, on_progress
        self.seen: set[tuple[int, str]] = set()
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watcher:
        self.poll(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - progress must never stop the search
                log.debug("progress poll failed: %s", exc)

    def poll(self, initial: bool = False) -> None:
        """Report what changed since the last poll (`initial`: only remember what is there)."""
        if self.on_event is None and self.on_progress is None:
            return
        trials = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        for t in trials:
            kinds = [EVENT_KINDS.get(t.state), "retried" if "failed_trial" in t.system_attrs else None]
            for kind in filter(None, kinds):
                if (t.number, kind) not in self.seen:
                    self.seen.add((t.number, kind))
                    if not initial and self.on_event is not None:
                        self.on_event(TrialEvent(kind, t))
        if self.on_progress is not None:
            values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE]
            self.on_progress(
                Progress(
                    finished=min(sum(t.state in FINISHED for t in trials), self.n_trials),
                    total=self.n_trials,
                    running=sum(t.state == TrialState.RUNNING for t in trials),
                    failed=sum(t.state == TrialState.FAIL for t in trials),
                    best_value=max(values) if values else None,
                    seconds=time.monotonic() - self.start,
                )
            )


# --- the search -------------------------------------------------------------------------------


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


def _run_processes(
    spec: StudySpec, url: str, n_trials: int, n_workers: int, common: dict[str, Any], deadline: float | None,
    study: optuna.Study,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for k in range(n_workers):
        kwargs = {
            **common,
            "spec_path": str(spec.path),
            "url": url,
            "n_trials": n_trials,
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
    counts = count_states(study)
    if failed and counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] < n_trials:
        raise StudyError(
            f"worker(s) {', '.join(failed)} exited with an error; run with -v for details, then rerun to finish"
            f" the study"
        )


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
    data_dir: Path | None = None,
    warm: WarmStart | None = None,
    on_event: OnEvent | None = None,
    on_progress: OnProgress | None = None,
) -> SearchSummary:
    """Run (or resume) the study until it has `n_trials` finished trials (`warm`: first enqueue
    another study's best trials; they count toward `n_trials`)."""
    start = time.monotonic()
    dev = resolve_device(device)
    n_workers, threads = default_layout(dev, workers, threads)
    data = spec.load_data(data_dir)
    seed = spec.sampler_seed if sampler_seed is None else sampler_seed
    study = prepare_study(spec, url, data, heartbeat=heartbeat, sampler_seed=seed, data_dir=data_dir, warm=warm)
    deadline = None if timeout is None else start + timeout
    common = {"device": str(dev), "threads": threads, "heartbeat": heartbeat, "data_dir": data_dir}
    common["sampler_seed"] = seed
    with Watcher(study, n_trials, on_event, on_progress):
        if n_workers == 1:
            run_worker(spec, url, n_trials, data=data, deadline=deadline, **common)
        else:
            _run_processes(spec, url, n_trials, n_workers, common, deadline, study)
    return summarize(study, spec, url, n_trials, time.monotonic() - start, n_workers, threads)
