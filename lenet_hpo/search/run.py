"""`run_search`: create or resume a study, then run its workers here or in processes until its budget."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import optuna

from lenet_hpo.notebook import SearchDisplay, wants_display
from lenet_hpo.search.layout import default_layout
from lenet_hpo.search.space import StudySpec
from lenet_hpo.search.storage import DEFAULT_HEARTBEAT, Heartbeat
from lenet_hpo.search.study import WarmStart, prepare_study
from lenet_hpo.search.watch import OnEvent, OnProgress, SearchSummary, Watcher, search_summary
from lenet_hpo.search.worker import WorkerArgs, run_processes, run_worker
from lenet_hpo.training import resolve_device


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
    progress: bool | None = None,
) -> SearchSummary:
    """Run (or resume) the study until it has `n_trials` finished trials (`warm`: first enqueue
    another study's best trials; they count toward `n_trials`).

    `on_event` gets each finished or retried trial, `on_progress` the counts about once a
    second.  `progress`: draw a live display in a Jupyter notebook (None: there, when no
    callbacks are given; `lenet_hpo.notebook`)."""
    if wants_display(progress, on_event, on_progress):
        view, verbosity = SearchDisplay(spec.name, n_trials), optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the display shows the trials, not Optuna's lines
        try:
            return run_search(
                spec, url, n_trials, workers=workers, threads=threads, timeout=timeout, sampler_seed=sampler_seed,
                device=device, heartbeat=heartbeat, data_dir=data_dir, warm=warm, on_event=view.on_event,
                on_progress=view.on_progress, progress=False,
            )
        finally:
            view.close()
            optuna.logging.set_verbosity(verbosity)
    start = time.monotonic()
    dev = resolve_device(device)
    n_workers, threads = default_layout(dev, workers, threads)
    data = spec.load_data(data_dir)
    seed = spec.sampler_seed if sampler_seed is None else sampler_seed
    study = prepare_study(spec, url, data, heartbeat=heartbeat, sampler_seed=seed, data_dir=data_dir, warm=warm)
    args = WorkerArgs(
        spec, url, n_trials, seed, device=str(dev), threads=threads, heartbeat=heartbeat, data_dir=data_dir,
        seconds=None if timeout is None else timeout - (time.monotonic() - start),  # what is left of it
        log_level=logging.getLogger().getEffectiveLevel(),
    )
    with Watcher(study, n_trials, on_event, on_progress):
        if n_workers == 1:
            run_worker(args, data)
        else:
            run_processes(args, n_workers, study)
    return search_summary(study, spec, url, n_trials, time.monotonic() - start, n_workers, threads)
