"""How sure are we?  The report's account of the three uncertainties behind its verdict.

- Seeds: the paired t-test over seeds, about these test images.
- The test set: a hierarchical paired bootstrap over seeds and test images, the
  probability of improvement, McNemar's exact test per seed (`stats.paired_bootstrap`),
  from the test predictions kept beside every retrained checkpoint.

Both are computed once, by retrain-best, and kept in its `RetrainResult`; this module
formats them.
- The search budget: the expected best validation accuracy after n trials (Dodge et
  al. 2019) from the study's own trials, against the baseline trial and the study's
  best-so-far curve.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from lenet_hpo.retrain import RetrainResult
from lenet_hpo.search.studies import StoredStudy, search_values
from lenet_hpo.sequential import Stopping
from lenet_hpo.stats import ALPHA, BootstrapResult, Comparison, expected_best, format_p, interval, points

Figure = tuple[str, go.Figure | None, str]  # title, figure (None: not available), note
NOT_AVAILABLE = (
    "not available: these runs were retrained before their test predictions were kept; rerun retrain-best"
    " (it reuses the trained runs and adds their predictions)"
)


STOPPING_RULE = (
    f"a seed pair at a time; each look's paired t-test spends part of a {ALPHA:.0%} error rate (O'Brien-Fleming"
    " type), so stopping early does not inflate false positives"
)


@dataclass(frozen=True)
class Confidence:
    """How sure the verdict is (`how_sure`): seeds, test-set noise and the search budget."""

    baseline: str  # the baseline the verdict is about
    comparison: Comparison  # with the test-set statistics where predictions were kept
    test_set: BootstrapResult | None  # None: not available
    n_images: int  # test images
    trials: list[tuple[int, float, bool]]  # (number, value, pruned) of the search's trials, in order
    expected: list[tuple[int, float, float]]  # (n, mean, std) of the best of n trials
    baseline_value: float | None  # the baseline trial's validation accuracy
    trials_to_beat_baseline: int | None
    subset: int | None  # validation images of the points inside epochs (None: whole split)
    stopping: Stopping | None = None  # how many seed pairs the verdict needed, and why it stopped

    def to_frame(self) -> pd.DataFrame:
        """The report's "How sure are we?" numbers (quantity, value)."""
        return numbers_table(self)

    def __repr__(self) -> str:
        return f"Confidence({self.comparison.verdict})"

    def _repr_html_(self) -> str:
        said = "".join(f"<p>{html.escape(s)}</p>" for s in sentences(self))
        return f"<div><h4>How sure are we?</h4>{said}{self.to_frame().to_html(index=False, border=0)}</div>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "difference": self.comparison.to_dict(),
            "expected_best": [{"n_trials": n, "mean": m, "std": s} for n, m, s in self.expected],
            "trials_to_beat_baseline": self.trials_to_beat_baseline,
        }


def how_sure(result: RetrainResult, stored: StoredStudy) -> Confidence:
    """The retrain result's statistics (computed once, by retrain-best) beside the study's search budget."""
    baseline, comparison, test_set = result.baselines[0], result.difference, result.test_set
    trials, baseline_value = search_values(stored.study)
    expected = expected_best([v for _, v, _ in trials]) if trials else []
    beats = [n for n, mean, _ in expected if baseline_value is not None and mean > baseline_value]
    subset = stored.record.get("val_subset", {}).get("images")
    return Confidence(
        baseline, comparison, test_set, int(result.dataset["n_test"]), trials, expected, baseline_value,
        beats[0] if beats else None, subset if subset and subset < result.dataset["n_val"] else None,
        result.stopping,
    )


def share(p: float) -> str:
    """A probability as a percentage that never rounds to a certainty it is not (99.96% is not 100%)."""
    if 0.999 < p < 1:
        return f"{p:.2%}" if p < 0.9999 else "over 99.99%"
    if 0 < p < 0.001:
        return f"{p:.2%}" if p >= 0.0001 else "under 0.01%"
    return f"{p:.1%}"


def sentences(c: Confidence) -> list[str]:
    """Plain sentences, in the order a reader asks."""
    d = c.comparison
    lo, hi = d.ci95
    out = [
        f"Over {d.n} seeds the tuned model is {100 * abs(d.difference):.2f} points"
        f" {'more' if d.difference >= 0 else 'less'} accurate than the {c.baseline} on the test split; the seeds"
        f" alone put the difference between {points(lo, signed=True)} and {points(hi, signed=True)} points"
        f" (95%, {d.test}, {format_p(d.p_value)})."
    ]
    if c.stopping is not None:
        why = c.stopping.reason()
        out.append(f"{why[0].upper()}{why[1:]}" + (f" ({STOPPING_RULE})." if c.stopping.early_stop else "."))
    if c.test_set is None or d.test_set_ci95 is None or d.prob_improvement is None:
        return [*out, f"Test-set statistics: {NOT_AVAILABLE}."]
    tlo, thi = d.test_set_ci95
    holds = tlo > 0 or thi < 0
    only = sum(m.only_tuned_right for m in c.test_set.mcnemar), sum(m.only_baseline_right for m in c.test_set.mcnemar)
    significant = sum(m.p_value < 0.05 for m in c.test_set.mcnemar)
    return [
        *out,
        f"The {c.n_images:,} test images are themselves a sample of the images such a model will meet. Drawing the"
        f" seeds and the test images again {len(c.test_set.differences):,} times, the difference lies between"
        f" {points(tlo, signed=True)} and {points(thi, signed=True)} points in 95% of draws, and the tuned model is"
        f" the more accurate in {share(d.prob_improvement)} of (seed, test set) draws. "
        + ("So the difference holds beyond these test images." if holds
           else "That interval includes no difference: on new data the improvement is not established."),
        f"Counting only the test images one model gets right and the other wrong: the tuned model alone on"
        f" {only[0]:,} and the {c.baseline} alone on {only[1]:,}, over all seeds; McNemar's exact test finds the"
        f" two differ (p < 0.05) on {significant} of {len(c.test_set.mcnemar)} seeds.",
    ]


def budget_sentences(c: Confidence) -> list[str]:
    if not c.expected:
        return ["The search has no finished trial to draw from."]
    n, (_, last, _) = len(c.expected), c.expected[-1]
    half = c.expected[n // 2 - 1][1] if n >= 2 else last
    if c.baseline_value is None:
        beat = "The study has no baseline trial to compare with."
    elif c.trials_to_beat_baseline is None:
        beat = f"It never passes the baseline trial's {c.baseline_value:.2%}."
    else:
        beat = f"It passes the baseline trial's {c.baseline_value:.2%} after {c.trials_to_beat_baseline} trial(s)."
    subset = f", on {c.subset:,} validation images" if c.subset else ""
    return [
        f"Had this study's {n} trials come in a random order, the best validation accuracy after n of them would"
        f" average the curve below (Dodge et al., 2019): {c.expected[0][1]:.2%} after one, {last:.2%} after {n}."
        f" {beat} From {n // 2} to {n} trials it rises by {100 * (last - half):.2f} points"
        + (": still improving." if last - half > 0.0005 else ": it has levelled off."),
        f"Pruned trials enter with the last validation accuracy they reported (as early as their first report{subset}),"
        " a lower bound of what their full budget would have given, so the curve is pessimistic. It also treats"
        " trials as independent draws; TPE chose each trial knowing the earlier ones, so the study's own"
        " best-so-far (in the order its trials ran) shows what this search found, the expected curve what the same"
        " trials would give in any order.",
    ]


def mcnemar_table(c: Confidence) -> pd.DataFrame | None:
    if c.test_set is None:
        return None
    rows = [{"seed": m.seed, "only tuned right": m.only_tuned_right, "only baseline right": m.only_baseline_right,
             "McNemar exact p": f"{m.p_value:.3g}"} for m in c.test_set.mcnemar]
    return pd.DataFrame(rows)


def numbers_table(c: Confidence) -> pd.DataFrame:
    d = c.comparison
    rows = [("difference (tuned - baseline), points", f"{points(d.difference, signed=True)}"),
            ("95% CI over seeds (t)", interval(d.ci95, signed=True)),
            ("p, paired t-test", format_p(d.p_value))]
    if c.test_set is not None and d.test_set_ci95 is not None and d.prob_improvement is not None:
        rows += [("95% interval, seeds and test images resampled", interval(d.test_set_ci95, signed=True)),
                 ("P(tuned more accurate), over (seed, test set) draws", share(d.prob_improvement))]
    else:
        rows.append(("test-set statistics", NOT_AVAILABLE))
    if c.expected:
        _, mean, std = c.expected[-1]
        rows += [("expected best validation accuracy, all trials", f"{mean:.4f} ± {std:.4f}"),
                 ("trials for the expected best to pass the baseline trial", str(c.trials_to_beat_baseline or "never"))]
    return pd.DataFrame(rows, columns=["quantity", "value"])


def bootstrap_figure(c: Confidence) -> Figure:
    title = "The difference with test-set noise"
    if c.test_set is None or c.comparison.test_set_ci95 is None:
        return title, None, f"The bootstrap distribution is {NOT_AVAILABLE}."
    d = c.comparison
    fig = go.Figure(go.Histogram(x=100 * c.test_set.differences, nbinsx=60, name="bootstrap draws",
                                 marker={"color": "#9fb8d6"}))
    bars = ((d.ci95, "95% CI over seeds (t)", "#d62728", 1.04),
            (d.test_set_ci95, "95% interval with test-set noise", "#1f77b4", 1.10))
    for (lo, hi), name, color, y in bars:
        fig.add_shape(type="line", xref="x", yref="paper", x0=100 * lo, x1=100 * hi, y0=y, y1=y,
                      line={"color": color, "width": 4})
        fig.add_annotation(xref="x", yref="paper", x=100 * hi, y=y, text=name, showarrow=False, xanchor="left",
                           font={"color": color})
    fig.add_vline(x=0, line={"color": "#555", "dash": "dash"})
    fig.update_layout(title="Tuned minus baseline test accuracy: seeds and test images resampled",
                      xaxis_title="difference (points)", yaxis_title="draws", height=420, showlegend=False,
                      margin={"t": 90})
    note = (
        f"{len(c.test_set.differences):,} draws; each resamples the seeds and one new test set shared by all"
        " runs. Red: the seeds-only t-interval; blue: the interval with test-set noise; dashed: no difference."
    )
    return title, fig, note


def budget_figure(c: Confidence) -> Figure:
    title = "What the search budget bought"
    if not c.expected:
        return title, None, "No finished trials."
    n = [e[0] for e in c.expected]
    mean, std = np.array([e[1] for e in c.expected]), np.array([e[2] for e in c.expected])
    fig = go.Figure()
    band = list(100 * (mean + std)) + list(100 * (mean - std))[::-1]
    fig.add_trace(go.Scatter(x=n + n[::-1], y=band, fill="toself", line={"width": 0}, fillcolor="#1f77b4",
                             opacity=0.2, name="± 1 std", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=n, y=100 * mean, name="expected best of n trials", line={"color": "#1f77b4"}))
    best = np.maximum.accumulate([v if not pruned else -np.inf for _, v, pruned in c.trials])
    fig.add_trace(go.Scatter(x=n, y=np.where(np.isfinite(best), 100 * best, np.nan), name="this study's best so far",
                             line={"color": "#2ca02c", "shape": "hv"}))
    if c.baseline_value is not None:
        fig.add_hline(y=100 * c.baseline_value, line={"color": "#d62728", "dash": "dash"},
                      annotation_text="baseline trial", annotation_position="bottom right")
    # A few poor draws (diverged runs) put the first trials' expected best far below the rest: the axis
    # starts at a quarter of the trials (or the baseline trial, if lower), where the comparison is.
    low = min(float(mean[len(mean) // 4]), c.baseline_value if c.baseline_value is not None else 1.0)
    top = max(float(mean[-1] + std[-1]), float(np.max(best)) if np.isfinite(best).any() else 0.0)
    fig.update_layout(title="Expected best validation accuracy against the number of trials", height=420,
                      xaxis_title="trials", yaxis_title="validation accuracy (%)",
                      yaxis_range=[100 * low - 0.3, min(100.0, 100 * top + 0.2)])
    note = (
        "Band: ± one standard deviation of the best of n trials drawn from this study's trials. The axis starts"
        f" near the curve at {len(mean) // 4 + 1} trials; the values for fewer trials are in the sentences above."
    )
    return title, fig, note
