"""Watching a search: the events and progress a caller sees, and the summary at its end.

Nothing here prints: progress reaches the caller through `on_event` (each finished
or retried trial) and `on_progress` (the study's state, about once a second).
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from lenet_hpo.search.space import StudySpec
from lenet_hpo.search.storage import mask_url
from lenet_hpo.search.studies import best_trials, count_states, is_baseline

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0  # how often the watcher polls the storage for events and progress
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class SearchSummary:
    """What a search did and found (`run_search`); shows itself as a table in a notebook."""

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

    def to_frame(self) -> pd.DataFrame:
        """The summary as a two-column table (quantity, value); the best trial's params below it."""
        rows = [("study", self.study), ("storage", self.storage), ("finished trials wanted", self.n_trials),
                ("complete / pruned / failed / running",
                 f"{self.n_complete} / {self.n_pruned} / {self.n_failed} / {self.n_running}"),
                ("best trial", self.best_number), ("best validation accuracy", _fmt(self.best_value)),
                ("baseline trial's validation accuracy", _fmt(self.baseline_value)),
                ("wall time", f"{self.seconds:.0f} s, {self.workers} worker(s) x {self.threads_per_worker} thread(s)")]
        rows += [(f"best: {k}", v) for k, v in self.best_params.items()]
        return pd.DataFrame(rows, columns=["quantity", "value"])

    def __repr__(self) -> str:
        best = "none complete" if self.best_value is None else f"best {self.best_value:.4f} (trial {self.best_number})"
        return (f"SearchSummary(study {self.study!r}: {self.n_complete} complete / {self.n_pruned} pruned /"
                f" {self.n_failed} failed, {best}, {self.seconds:.0f} s)")

    def _repr_html_(self) -> str:
        return f"<div><b>{html.escape(repr(self))}</b>{self.to_frame().to_html(index=False, border=0)}</div>"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class TrialEvent:
    """A trial that finished ("complete", "pruned", "failed") or was started again with a
    failed trial's params ("retried")."""

    kind: str
    trial: FrozenTrial

    @property
    def baseline(self) -> bool:
        return is_baseline(self.trial)


@dataclass(frozen=True)
class Progress:
    """A search's state about once a second (`run_search`'s on_progress): counts and the best so far."""

    finished: int  # COMPLETE + PRUNED
    total: int  # the study-wide budget
    running: int
    failed: int
    best_value: float | None
    seconds: float  # since this search started


OnEvent = Callable[[TrialEvent], None]
OnProgress = Callable[[Progress], None]





def search_summary(
    study: optuna.Study, spec: StudySpec, url: str, n_trials: int, seconds: float, workers: int, threads: int
) -> SearchSummary:
    """Where the study stands after a search: counts, the best candidate (the baseline trial is
    the reference, never the best), the baseline trial's value, the Pareto front."""
    counts = count_states(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best: FrozenTrial | None = None
    pareto: list[dict[str, Any]] = []
    if any(not is_baseline(t) for t in complete):
        if spec.multi_objective:
            front = study.best_trials
            pareto = [{"number": t.number, "values": t.values, "params": t.params} for t in front]
            best = max(front, key=lambda t: t.values[0])
        else:
            best = best_trials(study)[0]
    baseline = next((t for t in complete if is_baseline(t)), None)
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
        baseline_value=baseline.values[0] if baseline else None,
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
        while not self._stop.wait(PROGRESS_EVERY_S):
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


