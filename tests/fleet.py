"""Helpers for the reliability tests: tiny studies, searches run as separate processes
(as on separate machines), polling the storage, and the figures docs/reliability.md
reports (finished, lost, duplicated, left RUNNING).

Set LENET_HPO_RELIABILITY_LOG=path to append each test's figures there as JSON lines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from studyfiles import C1_LR, write_study

from lenet_hpo.config import TrialConfig
from lenet_hpo.search.space import config_from_params
from lenet_hpo.search.storage import open_storage
from lenet_hpo.search.studyfile import load_spec

ROOT = Path(__file__).resolve().parents[1]
FIGURES_ENV = "LENET_HPO_RELIABILITY_LOG"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_fleet_study(
    directory: Path, name: str, *, slow: bool = False, baseline: bool = False, sampler: dict | None = None
) -> Path:
    """Synthetic data, no pruning, random sampling (or `sampler`): a trial is ~0.1 s of training
    ("fast") or a few seconds ("slow", so that a fault can land mid-trial).  `baseline`: a
    space that contains BASELINE, so the study enqueues it."""
    return write_study(
        directory,
        name,
        study={
            "dataset": "synthetic",
            "val_size": 200,
            "train_limit": 1000 if slow else 200,
            "epochs": 12 if slow else 1,
        },
        sampler=sampler or {"name": "random", "seed": 0},
        pruner={"name": "none"},
        fixed=None if baseline else {"activation": "relu", "optimizer": "adam"},
        space={"c1": C1_LR["c1"]} if baseline else C1_LR,
    )


def search_argv(
    study: Path, url: str, trials: int, *, workers: int = 1, heartbeat: int = 2, json: bool = True
) -> list[str]:
    return [
        sys.executable, "-m", "lenet_hpo", "search", "--study", str(study), "--trials", str(trials), "--workers",
        str(workers), "--threads", "1", "--heartbeat", str(heartbeat), "--device", "cpu", "--storage", url,
        *(["--json"] if json else []),
    ]


def fresh(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials whose params a sampler drew: neither enqueued (baseline, warm start) nor retries."""
    return [t for t in trials if "fixed_params" not in t.system_attrs and "failed_trial" not in t.system_attrs]


def retried(trials: list[FrozenTrial], number: int) -> bool:
    return any(number in t.system_attrs.get("retry_history", ()) for t in trials)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def start(argv: list[str], log: Path) -> subprocess.Popen[str]:
    """A process in its own session (so a test can signal its whole group, like Ctrl-C)."""
    out = log.open("w")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env(), start_new_session=True)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(
    what: str, predicate: Callable[[], Any], timeout: float = 120, procs: tuple[subprocess.Popen[str], ...] = ()
) -> Any:
    """Poll until `predicate()` is truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (KeyError, optuna.exceptions.StorageInternalError):
            value = None
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"process exited with {p.returncode} while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Watch:
    """One storage connection for polling a study while searches run."""

    def __init__(self, url: str, name: str) -> None:
        self.storage = open_storage(url, heartbeat=None)
        self.name = name

    def trials(self) -> list[FrozenTrial]:
        return optuna.load_study(study_name=self.name, storage=self.storage).get_trials(deepcopy=False)

    def mid_trial(self) -> list[FrozenTrial]:
        """RUNNING trials past their claim and at least one epoch into training."""
        return [
            t
            for t in self.trials()
            if t.state == TrialState.RUNNING and t.user_attrs.get("claimed") == t.number and t.user_attrs.get("history")
        ]

    def figures(self, n_trials: int) -> dict[str, int]:
        trials = self.trials()
        finished = [t for t in trials if t.state in FINISHED]
        numbers = [t.number for t in trials]
        return {
            "trials_wanted": n_trials,
            "finished": len(finished),
            "lost": max(0, n_trials - len(finished)),
            "duplicated": len(numbers) - len(set(numbers)) + max(0, len(finished) - n_trials),
            "left_running": sum(t.state == TrialState.RUNNING for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
            "workers_that_ran_trials": len({t.user_attrs.get("worker") for t in finished}),
        }


def assert_exact(figures: dict[str, int]) -> None:
    assert figures["finished"] == figures["trials_wanted"], figures
    assert figures["lost"] == figures["duplicated"] == figures["left_running"] == 0, figures


def assert_consistent(trials: list[FrozenTrial], study_file: Path) -> None:
    """Each completed trial's value is its last epoch's validation accuracy, and its
    recorded config is the one its params map to."""
    spec = load_spec(str(study_file))
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        assert t.value == t.user_attrs["history"][-1]["eval_acc"], t.number
        assert TrialConfig.from_dict(t.user_attrs["config"]) == config_from_params(t.params, spec), t.number


def record(scenario: str, **figures: Any) -> None:
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"scenario": scenario, **figures}) + "\n")
