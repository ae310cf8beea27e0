"""Everything a person sees: progress bars, trial lines, status lines, tables and summaries.

The library reports through callbacks and returns values; this module (with `cli.py`)
turns them into text.  Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from lenet_hpo.errors import printable

if TYPE_CHECKING:  # annotations only: `--help` does not wait for torch and optuna to load
    from optuna.trial import FrozenTrial

    from lenet_hpo.data import Dataset
    from lenet_hpo.final import FinalRun
    from lenet_hpo.retrain import EpochDone, RetrainResult
    from lenet_hpo.search import Progress, SearchSummary, TrialEvent
    from lenet_hpo.sequential import Look
    from lenet_hpo.training import EpochStats

PROG = "python -m lenet_hpo"


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# --- search ---------------------------------------------------------------------------------------


def trial_line(t: FrozenTrial) -> str:
    from lenet_hpo.search.studies import is_baseline  # optuna is loaded once there are trials to show

    hist = t.user_attrs.get("history", [])
    epochs = float(t.user_attrs.get("epochs_trained", len(hist)))
    secs = float(t.user_attrs.get("seconds_trained", sum(h["seconds"] for h in hist)))
    role = " (baseline)" if is_baseline(t) else " (a [[start]] configuration)" if "start" in t.user_attrs else ""
    if t.state.name == "COMPLETE":
        what = f"val_acc {t.values[0]:.4f}"
        if len(t.values) > 1:
            what += f", {t.values[1]:,.0f} {'params' if t.values[1] >= 0 else ''}"
    elif t.state.name == "PRUNED":
        outcome = t.user_attrs.get("outcome", "pruned")
        value = t.intermediate_values.get(t.last_step) if t.last_step is not None and outcome == "pruned" else None
        what = f"{outcome} after {epochs:g} epochs" + (f" at {value:.4f}" if value is not None else "")
    else:
        what = t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason", "failed")
    return f"trial {t.number:3d} {t.state.name:8s} {what} ({epochs:g} ep, {secs:.0f} s){role}"


STATUS_EVERY_S = 30.0  # a log gets a status line at most this often


def duration(seconds: float) -> str:
    """h:mm:ss or m:ss, for elapsed times and ETAs."""
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class SearchLog:
    """A search's progress on stderr.  On a terminal: a bar and a line per finished trial.  In a
    log (stderr not a terminal: a file, docker compose, a job scheduler): a line per finished or
    retried trial and a status line at most every 30 s, never a redrawn bar.  With fmt "json":
    one JSON object per event (trial complete, pruned, failed, retried; status; done)."""

    def __init__(self, name: str, total: int, *, stream: TextIO = sys.stderr, fmt: str = "text",
                 tty: bool | None = None, status_every: float = STATUS_EVERY_S) -> None:
        self.name, self.total, self.stream, self.fmt, self.status_every = name, total, stream, fmt, status_every
        on_terminal = stream.isatty() if tty is None else tty
        self.bar = None
        if on_terminal and fmt == "text":
            self.bar = tqdm(total=total, desc=name, unit="trial", dynamic_ncols=True, file=stream)
        self.last_status: float | None = None

    def _emit(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _json(self, event: str, **fields: Any) -> None:
        self._emit(json.dumps({"event": event, "study": self.name, **fields}, default=str))

    def on_event(self, event: TrialEvent) -> None:
        t = event.trial
        retry_of = t.system_attrs.get("failed_trial")
        if self.fmt == "json":
            last = t.intermediate_values.get(t.last_step) if t.last_step is not None else None
            value = t.values[0] if t.values else last
            self._json(event.kind, trial=t.number, value=value, epochs=t.user_attrs.get("epochs_trained"),
                       seconds=t.user_attrs.get("seconds_trained"), params=t.params, retry_of=retry_of,
                       role="baseline" if event.baseline else None, warm_start=t.user_attrs.get("warm_start"))
        elif event.kind == "retried":
            self._emit(f"trial {t.number:3d} RETRY    the params of failed trial {retry_of}")
        else:
            self._emit(trial_line(t))

    def on_progress(self, p: Progress) -> None:
        if self.bar is not None:
            self.bar.n = p.finished
            if p.best_value is not None:
                self.bar.set_postfix(best=f"{p.best_value:.4f}", refresh=False)
            self.bar.refresh()
            return
        if p.seconds < (self.last_status or 0.0) + self.status_every:
            return
        self.last_status = p.seconds
        eta = p.seconds / p.finished * (p.total - p.finished) if p.finished else None
        if self.fmt == "json":
            self._json("status", finished=p.finished, total=p.total, running=p.running, failed=p.failed,
                       best=p.best_value, elapsed_s=round(p.seconds), eta_s=None if eta is None else round(eta))
            return
        best = "-" if p.best_value is None else f"{p.best_value:.4f}"
        self._emit(f"status: {p.finished}/{p.total} finished, {p.running} running, {p.failed} failed, best {best},"
                   f" {duration(p.seconds)} elapsed, ETA {'-' if eta is None else duration(eta)}")

    def done(self, summary: SearchSummary) -> None:
        self.close()
        if self.fmt == "json":
            self._json("done", **{k: v for k, v in summary.to_dict().items() if k != "pareto"})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def search_summary(s: SearchSummary, study_arg: str, storage_given: bool) -> list[str]:
    lines = [
        "",
        f"{s.n_complete} complete, {s.n_pruned} pruned, {s.n_failed} failed in {s.seconds:.0f} s"
        f" ({s.workers} worker(s) x {s.threads_per_worker} thread(s))",
    ]
    if s.best_number is None or s.best_value is None:
        return [*lines, "no trial completed yet (beside the baseline, the reference): run it again with more --trials"]
    lines.append(f"best trial {s.best_number}: validation accuracy {s.best_value:.4f}")
    if s.baseline_value is not None:
        lines.append(f"baseline trial:  validation accuracy {s.baseline_value:.4f} (same epoch budget)")
    lines += [f"  {k:14s} {v}" for k, v in s.best_params.items()]
    # a masked password cannot be pasted back: name the URL instead of showing it
    storage = "" if not storage_given else " --storage URL" if "***" in s.storage else f" --storage '{s.storage}'"
    study = f" --study {study_arg}"
    return [
        *lines,
        "next:",
        f"  {PROG} dashboard{study}{storage}      # browse the study",
        f"  {PROG} retrain-best{study}{storage}   # retrain the best on all training data, compare with the baseline",
    ]


# --- train and retrain-best -----------------------------------------------------------------------


class EpochBar:
    """A bar over epochs (of one run, or of all runs of retrain-best) with an ETA.  In a log
    (stderr not a terminal) no redrawn bar: the runs' lines and a status line at most every 30 s."""

    def __init__(self, desc: str, total: int, *, enabled: bool = True, stream: TextIO = sys.stderr,
                 tty: bool | None = None, status_every: float = STATUS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        on_terminal = stream.isatty() if tty is None else tty
        self.desc, self.stream, self.status_every, self.clock = desc, stream, status_every, clock
        # Counted here, not read from tqdm: a disabled bar (in a log) counts nothing.
        self.log, self.done, self.skipped, self.total = enabled and not on_terminal, 0, 0, total
        self.started = self.last_status = clock()
        self.bar = tqdm(total=total, desc=desc, unit="epoch", file=stream, disable=not (enabled and on_terminal),
                        dynamic_ncols=True)

    def _status(self) -> None:
        now = self.clock()
        if not self.log or now < self.last_status + self.status_every:
            return
        self.last_status = now
        done, total, elapsed = self.done, self.total, now - self.started
        trained = done - self.skipped  # epochs taken from the cache or an earlier run took no time
        eta = duration(elapsed / trained * (total - done)) if trained else "-"
        self.stream.write(f"{self.desc}: {done}/{total} epochs, {duration(elapsed)} elapsed, ETA {eta}\n")
        self.stream.flush()

    def _update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)

    def on_train_epoch(self, e: EpochStats) -> None:
        self._update(1)
        postfix = {"loss": f"{e.train_loss:.4f}", "acc": f"{e.train_acc:.4f}", f"{e.split}_acc": f"{e.eval_acc:.4f}"}
        self.bar.set_postfix(**postfix, s=f"{e.seconds:.1f}")
        self._status()

    def on_epoch_done(self, e: EpochDone) -> None:
        if e.role.startswith("trial "):  # re-scoring the top trials (--top-k): epochs beyond the final runs
            self.total += 1
            self.bar.total = self.total
        self._update(1)
        self.bar.set_postfix(run=f"{e.role} seed {e.seed}", epoch=f"{e.epoch}/{e.epochs}")
        self._status()

    def on_run(self, run: FinalRun, epochs: int) -> None:
        """A finished run: its line, and the bar moved past the epochs it did not train here."""
        if run.source != "trained":
            self.skipped += epochs
            self._update(epochs)
        what = f"{run.epochs} epochs, {run.seconds:.0f} s" if run.source == "trained" else run.source
        line = f"{run.role:9s} seed {run.seed}: test accuracy {run.test_accuracy:.4f} ({what})"
        self.bar.write(line, file=self.stream)

    def on_look(self, look: Look) -> None:
        """The verdict so far, after a seed pair; the bar drops the pairs a settled verdict skips."""
        self.bar.write(f"verdict {look.sentence()}", file=self.stream)
        if look.settled and look.pairs < look.max_pairs:
            self.total = self.done
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def train_summary(run: FinalRun, device: str) -> list[str]:
    if run.outcome == "diverged":
        return [
            f"diverged: the loss became NaN/inf in epoch {run.epochs}; lower the learning rate."
            f" Checkpoint: {run.checkpoint}"
        ]
    return [
        f"test accuracy {run.test_accuracy:.4%} after {run.epochs} epochs ({run.params:,} parameters,"
        f" {run.seconds:.0f} s on {device}, {run.precision})",
        f"checkpoint: {run.checkpoint}",
    ]


def retrain_summary(r: RetrainResult) -> list[str]:
    precisions = "/".join(sorted({m.precision for m in r.models.values()}))
    n_fit = r.dataset["n_train"] + r.dataset["n_val"]
    lines = [
        "",
        f"best trial {r.trial} vs {', '.join(r.baselines)}: {r.n_seeds} seeds x {r.epochs} epochs each,"
        f" on {n_fit} training images, {precisions}; test split",
    ]
    for role, m in r.models.items():
        reused = [s for s in m.sources if s != "trained"]
        note = f"  ({len(reused)} of {len(m.sources)} runs {'/'.join(sorted(set(reused)))})" if reused else ""
        lines.append(
            f"  {role:9s} {100 * m.mean:.2f}% ± {100 * m.std:.2f}  95% CI [{100 * m.ci95[0]:.2f},"
            f" {100 * m.ci95[1]:.2f}]  {m.params:,} params{note}"
        )
    lines += [f"verdict vs {name} ({c.test}): {c.verdict}" for name, c in r.comparisons.items()]
    if r.stopping is not None:
        lines.append(f"seeds: {r.stopping.reason()}")
    if r.tied:
        lines.append(f"trial {r.trial}: the fewest MACs of {len(r.tied)} trials tied with the best within the"
                     " validation check's noise (--pick best: the best by value alone)")
    return [*lines, f"results: {r.results_csv}", f"next: {PROG} report --study {r.study}"]


# --- data ------------------------------------------------------------------------------------


def data_summary(data: Dataset) -> list[str]:
    meta = data.meta()
    lines = [
        f"{data.name}: {meta['n_train']} train + {meta['n_val']} validation (split seed {data.split_seed}),"
        f" {meta['n_test']} test; {data.channels}x32x32; checksum {data.checksum[:16]}…"
    ]
    if data.source:
        src = data.source
        lines.append(f"folder {src['path']} ({src['layout']}); {src['not_images']} file(s) that are not images ignored")
        if src["skipped"]:
            lines.append(f"{len(src['skipped'])} unreadable image(s) left out: {'; '.join(src['skipped'][:10])}")
    counts = data.counts()
    width = max(len(c) for c in data.classes)
    lines.append(f"{'class':<{width}}  {'train':>7}  {'val':>7}  {'test':>7}")
    for c in data.classes:
        lines.append(f"{c:<{width}}  {counts['train'][c]:>7}  {counts['val'][c]:>7}  {counts['test'][c]:>7}")
    return lines


# --- predict ----------------------------------------------------------------------------------


def prediction_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Rows of (image, label, probability, top k), the first one the header; aligned columns."""
    rows = [(printable(r[0]), *r[1:]) for r in rows]  # an image's name cannot forge a row
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
