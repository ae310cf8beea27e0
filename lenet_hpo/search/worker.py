"""Workers: claim a trial under the study-wide lock, run it, recover from what can be recovered.

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

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from lenet_hpo.data import Dataset
from lenet_hpo.errors import LenetHpoError, StorageError, StudyError, experimental_used_knowingly
from lenet_hpo.search.objective import Objective
from lenet_hpo.search.space import StudySpec, trial_seed
from lenet_hpo.search.storage import DEFAULT_HEARTBEAT, ClaimLock, Heartbeat, open_storage
from lenet_hpo.search.studies import count_states
from lenet_hpo.training import resolve_device, resolve_precision

log = logging.getLogger(__name__)
WAIT_FOR_RUNNING_S = 1.0  # how long a worker waits before asking again whether running trials need retries
PARENT_CHECK_S = 0.5  # how often a worker process checks that the search that started it is alive
MAX_STORAGE_RETRIES = 8  # consecutive failed rounds (backoff 1, 2, 4 ... 30 s) before a worker gives up


@dataclass(frozen=True)
class WorkerArgs:
    """Everything a worker needs, resolved once and picklable for a worker process: the spec
    travels whole (with the study file's text), so no worker reads the file again."""

    spec: StudySpec
    url: str
    n_trials: int  # the study-wide budget of finished trials
    sampler_seed: int  # the study seed every trial's draws derive from (`trial_seed`)
    device: str = "auto"
    threads: int | None = None
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT
    data_dir: Path | None = None
    seconds: float | None = None  # time left for claiming trials (None: no limit)
    log_level: int = logging.WARNING


class ClaimLostError(StorageError):
    """The claim lock's connection dropped while this worker was claiming a trial."""


# What a worker outlives: a dropped connection (SQLAlchemy, or Optuna wrapping it), a
# lost claim lock, or its trial failed by another worker after missed heartbeats.
RECOVERABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
    optuna.exceptions.UpdateFinishedTrialError, ClaimLostError,
)



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
    like the heartbeats' (`retry_failed`), and so is any failed trial without the mark: an
    interrupt that landed while it was being claimed, after its params were drawn (an
    enqueued trial has them from the start), failed it before it had a worker's name."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("claimed") != t.number or (worker is not None and t.user_attrs.get("worker") == worker):
            log.warning("trial %d was left RUNNING by an interrupted or dead worker: failing it", t.number)
            study.tell(t.number, state=TrialState.FAIL)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if "claimed" not in t.user_attrs or (worker is not None and t.user_attrs.get("worker") == worker):
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





class Worker:
    """Claims and runs trials on one study until its budget is reached."""

    def __init__(self, args: WorkerArgs, data: Dataset, device: torch.device) -> None:
        spec = args.spec
        self.spec, self.seed, self.max_retry = spec, args.sampler_seed, args.heartbeat.max_retry
        self.storage = open_storage(args.url, heartbeat=args.heartbeat)
        self.study = optuna.load_study(
            study_name=spec.name,
            storage=self.storage,
            sampler=spec.make_sampler(args.sampler_seed),
            pruner=spec.make_pruner(len(data.train), spec.check_images(len(data.val))),
        )
        self.lock = ClaimLock(args.url, spec.name)
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
                    time.sleep(WAIT_FOR_RUNNING_S)
                ran += outcome is True
        finally:
            self.lock.close()
        return ran


class _InterruptWithoutTraceback(logging.Filter):
    """Optuna logs a trial that Ctrl-C stopped with the KeyboardInterrupt's whole traceback; the
    line that the trial failed is enough (the search then says "interrupted")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None and issubclass(record.exc_info[0], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True


def run_worker(args: WorkerArgs, data: Dataset | None = None) -> int:
    """One worker in this process (see `Worker.run`); `data`: the study's, loaded already."""
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _InterruptWithoutTraceback) for f in handler.filters):
            handler.addFilter(_InterruptWithoutTraceback())
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    resolve_precision(args.spec.precision, args.spec.base_config(), dev)  # an impossible precision fails first
    data = (data if data is not None else args.spec.load_data(args.data_dir)).to(dev)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    return Worker(args, data, dev).run(args.n_trials, deadline)


_interrupted = threading.Event()  # set in a worker process by its first SIGINT


def _interrupt_once(signum: int, frame: object) -> None:
    if _interrupted.is_set():
        return  # a second Ctrl-C must not interrupt failing the trial
    _interrupted.set()
    raise KeyboardInterrupt


def _watch_parent(parent: int, every: float = PARENT_CHECK_S) -> None:
    """Interrupt this worker process once its parent is gone (killed, even with -9): it then
    fails its trial, which is retried, and exits, as on Ctrl-C; no worker goes on unsupervised."""
    while os.getppid() == parent:
        time.sleep(every)
    log.warning("worker %s: the search that started it is gone; stopping", os.getpid())
    os.kill(os.getpid(), signal.SIGINT)


def _worker_process(args: WorkerArgs, parent: int) -> None:
    signal.signal(signal.SIGINT, _interrupt_once)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_worker(args)
    except KeyboardInterrupt:
        # The trial is failed; exit now even if Optuna left a heartbeat thread behind.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def run_processes(args: WorkerArgs, n_workers: int, study: optuna.Study) -> None:
    """`n_workers` worker processes on `args`' study until its budget is reached; Ctrl-C is passed on."""
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for k in range(n_workers):
        p = ctx.Process(target=_worker_process, args=(args, os.getpid()), name=f"lenet-hpo-worker-{k}")
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
    if failed and counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] < args.n_trials:
        raise StudyError(
            f"worker(s) {', '.join(failed)} exited with an error; run with -v for details, then rerun to finish"
            f" the study"
        )


