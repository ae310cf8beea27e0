"""Live progress in a Jupyter notebook: one display per call, updated in place.

In an IPython kernel stderr is no terminal, so the console's bars would turn into a wall
of status lines.  Here the same callbacks (`on_event`, `on_progress`, `on_epoch`, `on_run`,
`on_look`) redraw one HTML block through an IPython display handle: a progress bar, the
counts, the ETA and the last lines.  `run_search` and `retrain_best` use it by themselves
when they run in a notebook (`progress=None`, the default) and no callbacks were given.
"""

from __future__ import annotations

import html
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lenet_hpo.final import FinalRun
    from lenet_hpo.retrain import EpochDone
    from lenet_hpo.search.watch import Progress, TrialEvent
    from lenet_hpo.sequential import Look

REDRAW_EVERY_S = 0.5  # a redraw at most this often, so a fast loop does not flood the notebook
LAST_LINES = 6


def in_notebook() -> bool:
    """Whether this runs in a Jupyter (IPython) kernel."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and getattr(shell, "kernel", None) is not None


class LiveDisplay:
    """One HTML block in the notebook, redrawn in place."""

    def __init__(self, title: str, total: int, unit: str, clock: Callable[[], float] = time.monotonic) -> None:
        from IPython.display import HTML, display

        self.title, self.total, self.unit, self.clock = title, total, unit, clock
        self.done, self.skipped, self.note = 0, 0, ""
        self.lines: deque[str] = deque(maxlen=LAST_LINES)
        self.started = self.drawn = clock()
        self._html = HTML
        self.handle = display(HTML(self.render()), display_id=True)

    def render(self) -> str:
        from lenet_hpo.console import duration

        elapsed = self.clock() - self.started
        worked = self.done - self.skipped
        eta = duration(elapsed / worked * (self.total - self.done)) if worked and self.done < self.total else "-"
        lines = "".join(f"<div>{html.escape(line)}</div>" for line in self.lines)
        return (
            f"<div class='lenet-hpo-progress' style='font-family:monospace;font-size:90%'>"
            f"<b>{html.escape(self.title)}</b> <progress value='{self.done}' max='{max(self.total, 1)}'"
            f" style='width:40%'></progress> {self.done}/{self.total} {self.unit}, {duration(elapsed)} elapsed,"
            f" ETA {eta}{' · ' + html.escape(self.note) if self.note else ''}{lines}</div>"
        )

    def redraw(self, *, force: bool = False) -> None:
        now = self.clock()
        if force or now >= self.drawn + REDRAW_EVERY_S:
            self.drawn = now
            self.handle.update(self._html(self.render()))

    def line(self, text: str) -> None:
        self.lines.append(text)
        self.redraw(force=True)

    def close(self) -> None:
        self.redraw(force=True)


class SearchDisplay:
    """A search's progress: finished trials of the study-wide budget, the best so far, the last trials."""

    def __init__(self, name: str, total: int) -> None:
        self.view = LiveDisplay(f"search {name}", total, "trials")

    def on_event(self, event: TrialEvent) -> None:
        from lenet_hpo.console import trial_line

        self.view.line(trial_line(event.trial) if event.kind != "retried" else f"trial {event.trial.number} retried")

    def on_progress(self, p: Progress) -> None:
        self.view.done, self.view.total = p.finished, p.total
        best = "-" if p.best_value is None else f"{p.best_value:.4f}"
        self.view.note = f"{p.running} running, {p.failed} failed, best {best}"
        self.view.redraw()

    def close(self) -> None:
        self.view.close()


class RetrainDisplay:
    """retrain-best's progress: epochs of all runs, each finished run, and the verdict after each pair."""

    def __init__(self, total_epochs: int, epochs: int) -> None:
        self.view, self.epochs = LiveDisplay("retrain-best", total_epochs, "epochs"), epochs

    def on_epoch(self, e: EpochDone) -> None:
        if e.role.startswith("trial "):  # re-scoring (--top-k): epochs beyond the final runs
            self.view.total += 1
        self.view.done += 1
        self.view.note = f"{e.role} seed {e.seed}, epoch {e.epoch}/{e.epochs}"
        self.view.redraw()

    def on_run(self, run: FinalRun) -> None:
        if run.source != "trained":
            self.view.done += self.epochs
            self.view.skipped += self.epochs
        what = f"{run.epochs} epochs, {run.seconds:.0f} s" if run.source == "trained" else run.source
        self.view.line(f"{run.role} seed {run.seed}: test accuracy {run.test_accuracy:.4f} ({what})")

    def on_look(self, look: Look) -> None:
        if look.settled and look.pairs < look.max_pairs:
            self.view.total = self.view.done
        self.view.line(f"verdict {look.sentence()}")

    def close(self) -> None:
        self.view.note = ""
        self.view.close()


def wants_display(progress: bool | None, *callbacks: Any) -> bool:
    """Whether a call draws its own notebook display: asked for, or by default in a notebook
    when the caller passed no callbacks of its own."""
    if progress is None:
        return in_notebook() and all(c is None for c in callbacks)
    return progress
