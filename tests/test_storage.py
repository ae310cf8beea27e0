"""The study storage under many workers and faults, on SQLite and on PostgreSQL alike:
a study ends with exactly N finished trials (none lost, none duplicated, none left
RUNNING).  Each `search` process stands for one machine.  Every test that makes sense
on both runs on both (`storage_url`); on PostgreSQL each test creates and drops its
own database (see `postgres_url` in conftest.py).  Figures: see docs/reliability.md."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
import torch
from fleet import (
    Watch,
    assert_consistent,
    assert_exact,
    env,
    free_port,
    fresh,
    record,
    retried,
    search_argv,
    start,
    stop,
    wait_for,
    write_fleet_study,
)
from optuna.trial import TrialState

from lenet_hpo.search import run_search
from lenet_hpo.search.space import config_from_params
from lenet_hpo.search.storage import Heartbeat
from lenet_hpo.search.studyfile import load_spec
from lenet_hpo.training import train

postgres = pytest.mark.postgres
pytestmark = pytest.mark.slow  # every test here runs searches as separate processes


def backend(url):
    return url.split(":", 1)[0].split("+", 1)[0]


def every_failure_retried(trials):
    """The rule of docs/reliability.md: a failed trial that had drawn its params has them run again."""
    for t in trials:
        if t.state == TrialState.FAIL and t.params:
            assert retried(trials, t.number), f"trial {t.number} failed with params {t.params} and was not retried"


def log_of(path):
    return path.read_text()[-4000:]


def test_eight_workers_end_with_exactly_n_consistent_trials(storage_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_fleet_study(tmp_path, "eight")
    spec = load_spec(str(study))
    start_s = time.monotonic()
    summary = run_search(spec, storage_url, 16, workers=8, threads=1, heartbeat=Heartbeat(2, 10), device="cpu")
    seconds = time.monotonic() - start_s
    watch = Watch(storage_url, "eight")
    figures = watch.figures(16)
    assert_exact(figures)
    assert figures["failed"] == summary.n_failed == 0 and summary.workers == 8
    trials = watch.trials()
    assert_consistent(trials, study)
    # Re-evaluate here: the best trial's params, trained again in its precision, give its value.
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    cfg = config_from_params(best.params, spec)
    result = train(cfg, spec.load_data(), device=torch.device("cpu"), precision=best.user_attrs["precision"])
    assert result.history[-1].eval_acc == best.value
    record(f"8 workers, one study ({backend(storage_url)})", workers=8, seconds=round(seconds), **figures)


def test_worker_killed_mid_trial_is_failed_by_heartbeat_and_retried(storage_url, tmp_path):
    study = write_fleet_study(tmp_path, "kill", slow=True)
    log = tmp_path / "search.log"
    proc = start(search_argv(study, storage_url, 3, workers=2, heartbeat=1), log)
    try:
        watch = Watch(storage_url, "kill")
        victim = wait_for("a trial in training", watch.mid_trial, procs=(proc,))[0]
        host, pid = victim.user_attrs["worker"].rsplit(":", 1)
        assert host == socket.gethostname()
        os.kill(int(pid), signal.SIGKILL)
        killed_at = time.monotonic()
        assert proc.wait(timeout=240) == 0, log_of(log)
    finally:
        stop(proc)
    trials = {t.number: t for t in watch.trials()}
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert any(t.state == TrialState.COMPLETE and t.params == victim.params for t in retries), retries
    every_failure_retried(list(trials.values()))
    figures = watch.figures(3)
    assert_exact(figures)
    record(
        f"SIGKILL of a worker mid-trial ({backend(storage_url)})",
        workers=2,
        killed_trial=victim.number,
        retried_as=min(t.number for t in retries),
        seconds_to_finish_after_kill=round(time.monotonic() - killed_at),
        **figures,
    )


def interrupt(argv, log, watch, how):
    """Start a search, interrupt it mid-trial; returns the study's figures right after."""
    proc = start(argv, log)
    try:
        wait_for("a trial in training", watch.mid_trial, procs=(proc,))
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C signals the whole process group
        else:
            proc.send_signal(signal.SIGTERM)  # `docker stop`, `kill`: the parent only; it passes SIGINT on
        assert proc.wait(timeout=90) == 130, log_of(log)
    finally:
        stop(proc)
    assert "interrupted" in log.read_text()
    return watch.figures(int(argv[argv.index("--trials") + 1]))


def test_interrupted_search_leaves_nothing_running_and_a_rerun_finishes(storage_url, tmp_path):
    study = write_fleet_study(tmp_path, "intr", slow=True)
    argv = search_argv(study, storage_url, 3, workers=2)
    watch = Watch(storage_url, "intr")
    after = {how: interrupt(argv, tmp_path / f"{how}.log", watch, how) for how in ("ctrl-c", "sigterm")}
    for how, figures in after.items():
        assert figures["left_running"] == 0, (how, figures)
    rerun = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    figures = watch.figures(3)
    assert_exact(figures)
    every_failure_retried(watch.trials())
    record(
        f"Ctrl-C, then SIGTERM, then the same command again ({backend(storage_url)})",
        workers=2,
        failed_by_interrupts=after["sigterm"]["failed"],
        running_after_ctrl_c=after["ctrl-c"]["left_running"],
        running_after_sigterm=after["sigterm"]["left_running"],
        **figures,
    )


@postgres
def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited


def test_workers_stop_within_a_heartbeat_when_the_search_is_killed_and_a_rerun_finishes_exactly(
    storage_url, tmp_path
):
    study = write_fleet_study(tmp_path, "orphan", slow=True)
    argv = search_argv(study, storage_url, 4, workers=2, heartbeat=2)
    watch, log = Watch(storage_url, "orphan"), tmp_path / "orphan.log"
    proc, workers = start(argv, log), []
    try:
        wait_for("a trial in training", watch.mid_trial, procs=(proc,))
        children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        workers = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2, children
        os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers are re-parented
        killed_at = time.monotonic()
        wait_for("the workers to stop", lambda: not any(alive(w) for w in workers), timeout=2 + 10)
        stopped_after = time.monotonic() - killed_at
        left = [t for t in watch.trials() if t.state == TrialState.RUNNING]
        assert left == [], [(t.number, t.user_attrs.get("worker")) for t in left]  # failed on the way out
    finally:
        stop(proc)
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
    assert stopped_after < 2 + 1, stopped_after  # within one heartbeat interval (2 s) of the kill, and a margin
    rerun = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    figures = watch.figures(4)
    assert_exact(figures)
    every_failure_retried(watch.trials())
    record(f"SIGKILL of the search's main process ({backend(storage_url)})", workers=2,
           seconds_to_stop=round(stopped_after, 1), **figures)


def test_workers_survive_terminated_connections(postgres_url, tmp_path):
    study = write_fleet_study(tmp_path, "drop")
    log = tmp_path / "search.log"
    proc = start(search_argv(study, postgres_url, 20, workers=2), log)
    database = postgres_url.rsplit("/", 1)[1]
    terminated = rounds = 0
    try:
        watch = Watch(postgres_url, "drop")
        wait_for("the first finished trial", lambda: watch.figures(20)["finished"] >= 1, procs=(proc,))
        admin = psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql", 1), autocommit=True)
        with admin:
            while proc.poll() is None and rounds < 6:
                rounds += 1
                terminated += admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND pid <>"
                    " pg_backend_pid()",
                    (database,),
                ).fetchone()[0]
                time.sleep(0.7)
        assert proc.wait(timeout=240) == 0, log_of(log)
    finally:
        stop(proc)
    assert terminated > 0
    figures = watch.figures(20)
    assert_exact(figures)
    text = log.read_text()
    record(
        "PostgreSQL connections terminated mid-study",
        workers=2,
        rounds=rounds,
        connections_terminated=terminated,
        worker_retries=text.count("retrying in"),
        **figures,
    )


def test_two_workers_many_short_trials_no_lock_errors(storage_url, tmp_path):
    study = write_fleet_study(tmp_path, "lite")
    start_s = time.monotonic()
    proc = subprocess.run(
        search_argv(study, storage_url, 50, workers=2), capture_output=True, text=True, env=env(), timeout=240
    )
    seconds = time.monotonic() - start_s
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "locked" not in proc.stderr.lower() and "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n_failed"] == 0
    figures = Watch(storage_url, "lite").figures(50)
    assert_exact(figures)
    assert len(Watch(storage_url, "lite").trials()) == 50  # no failed or extra trial rows either
    record(
        f"2 workers, short trials ({backend(storage_url)})", workers=2, seconds=round(seconds), lock_errors=0, **figures
    )


def test_three_search_processes_and_the_dashboard_on_one_database(storage_url, tmp_path):
    """The docker-compose topology without Docker: PostgreSQL, three `search` processes
    started at the same moment on an empty database, and the dashboard."""
    study = write_fleet_study(tmp_path, "fleet", baseline=True)
    procs = [start(search_argv(study, storage_url, 9), tmp_path / f"search{k}.log") for k in range(3)]
    port = free_port()
    # The dashboard opens an existing storage only (an SQLite file appears with the study).
    watch = Watch(storage_url, "fleet")
    wait_for("the study to exist", lambda: watch.trials() is not None, procs=tuple(procs))
    dashboard = start(
        [
            sys.executable, "-m", "lenet_hpo", "dashboard", "--study", "fleet", "--storage", storage_url, "--port",
            str(port),
        ],
        tmp_path / "dashboard.log",
    )
    try:

        def listed():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                names = [s["study_name"] for s in json.loads(resp.read())["study_summaries"]]
            return names == ["fleet"]

        wait_for("the dashboard to list the study", lambda: _quietly(listed), procs=(dashboard,))
        codes = [p.wait(timeout=240) for p in procs]
        assert codes == [0, 0, 0], [log_of(tmp_path / f"search{k}.log") for k in range(3)]
    finally:
        for p in [*procs, dashboard]:
            stop(p)
    figures = watch.figures(9)
    assert_exact(figures)
    baselines = [t for t in watch.trials() if t.user_attrs.get("role") == "baseline"]
    assert len(baselines) == 1, "the baseline trial must be enqueued once, however many searches start together"
    record(
        f"3 search processes + dashboard (compose topology, no Docker; {backend(storage_url)})", workers=3, **figures
    )


def _quietly(fn):
    try:
        return fn()
    except OSError:
        return None


def test_searches_started_together_never_draw_the_same_params(storage_url, tmp_path):
    """Four `search` processes (machines) start at the same moment on one study: no two
    sampled trials share params, in TPE's random start-up or after it."""
    study = write_fleet_study(tmp_path, "together", sampler={"name": "tpe", "seed": 0, "n_startup_trials": 10})
    procs = [start(search_argv(study, storage_url, 32), tmp_path / f"s{k}.log") for k in range(4)]
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert codes == [0, 0, 0, 0], [log_of(tmp_path / f"s{k}.log") for k in range(4)]
    watch = Watch(storage_url, "together")
    figures = watch.figures(32)
    assert_exact(figures)
    trials = watch.trials()
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # they did share the work
    drawn = [tuple(sorted(t.params.items())) for t in fresh(trials)]
    startup = [tuple(sorted(t.params.items())) for t in fresh(trials) if t.number < 10]
    assert len(drawn) >= 30 and len(set(drawn)) == len(drawn) and len(set(startup)) == len(startup)
    record(f"4 searches started together, TPE ({backend(storage_url)})", workers=4, duplicated_samples=0, **figures)


def test_a_single_worker_study_is_reproducible_from_its_seed(tmp_path):
    study = write_fleet_study(tmp_path, "again", sampler={"name": "tpe", "seed": 3, "n_startup_trials": 3})
    params = []
    for k in range(2):
        url = f"sqlite:///{tmp_path / f'again{k}.db'}"
        proc = subprocess.run(search_argv(study, url, 6), capture_output=True, text=True, env=env(), timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        params.append([t.params for t in sorted(Watch(url, "again").trials(), key=lambda t: t.number)])
    assert params[0] == params[1]
