"""Honest statistics for "is the tuned model better than the baseline, and by how much?"

Accuracies are fractions in [0, 1]; differences are reported in percentage points.
Runs of the two models share seeds, so the default test is the paired t-test on
the per-seed differences (the seed fixes initialisation and batch order for both);
Welch's t-test is used when the seeds do not pair up.

The t-test speaks of seed noise on these test images.  `paired_bootstrap` adds the noise
of the test set itself (a sample of the digits a model will meet): a hierarchical
paired bootstrap over seeds and test images, the probability of improvement, and
McNemar's exact test per seed.  `expected_best` is Dodge et al.'s (EMNLP 2019)
expected best validation accuracy after n trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import stats as st

from lenet_hpo.errors import ConfigError

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for n = 1
    ci95: tuple[float, float]  # t interval of the mean

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    test: str  # "paired t-test" or "Welch t-test"
    n: int
    difference: float  # mean(a) - mean(b)
    ci95: tuple[float, float]
    p_value: float
    effect_size: float  # Cohen's d_z (paired) or Hedges' g (Welch)
    effect_size_name: str
    significant: bool
    verdict: str
    # With the test set's noise (`paired_bootstrap`); None where the predictions are not kept.
    test_set_ci95: tuple[float, float] | None = None
    prob_improvement: float | None = None
    mcnemar: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        test_ci = known.get("test_set_ci95")
        return cls(**{**known, "ci95": tuple(known["ci95"]), "test_set_ci95": tuple(test_ci) if test_ci else None})


def t_interval(mean: float, sem: float, dof: float, level: float = 0.95) -> tuple[float, float]:
    if dof <= 0 or not math.isfinite(sem):
        return (math.nan, math.nan)
    if sem == 0:
        return (mean, mean)
    half = float(st.t.ppf(0.5 + level / 2, dof)) * sem
    return (mean - half, mean + half)


def summarize(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)) -> Summary:
    """Mean, std and 95% t-interval; the interval is clipped to `bounds` (accuracies)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ConfigError("values: need at least one value")
    n = int(x.size)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    ci = t_interval(mean, std / math.sqrt(n), n - 1) if n > 1 else (math.nan, math.nan)
    if n > 1:
        ci = (max(ci[0], bounds[0]), min(ci[1], bounds[1]))
    return Summary(n=n, mean=mean, std=std, ci95=ci)


def compare(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool = True,
    names: tuple[str, str] = ("the tuned model", "the baseline"),
) -> Comparison:
    """Compare accuracies `a` (e.g. tuned) with `b` (e.g. baseline)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        raise ConfigError("compare: need at least two runs of each model (use --seeds 2 or more)")
    if paired and x.size != y.size:
        raise ConfigError("compare: paired runs need the same number of seeds")
    if paired:
        d = x - y
        diff = float(d.mean())
        sd = float(d.std(ddof=1))
        n = int(d.size)
        if sd == 0:
            p = 1.0 if diff == 0 else 0.0
            effect = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        else:
            p = float(st.ttest_rel(x, y).pvalue)
            effect = diff / sd
        ci = t_interval(diff, sd / math.sqrt(n), n - 1)
        test, effect_name = "paired t-test", "Cohen's d_z"
    else:
        res = st.ttest_ind(x, y, equal_var=False)
        diff = float(x.mean() - y.mean())
        vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
        se = math.sqrt(vx + vy)
        dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)) if se > 0 else 0.0
        ci = t_interval(diff, se, dof) if se > 0 else (diff, diff)
        p = float(res.pvalue) if se > 0 else (1.0 if diff == 0 else 0.0)
        pooled = math.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2))
        correction = 1 - 3 / (4 * (x.size + y.size) - 9)
        effect = diff / pooled * correction if pooled > 0 else 0.0
        n = int(min(x.size, y.size))
        test, effect_name = "Welch t-test", "Hedges' g"
    significant = p < ALPHA
    return Comparison(
        test=test,
        n=n,
        difference=diff,
        ci95=ci,
        p_value=p,
        effect_size=effect,
        effect_size_name=effect_name,
        significant=significant,
        verdict=verdict(diff, ci, p, names),
    )


def points(v: float, *, signed: bool = False) -> str:
    """A difference of accuracies (fractions) in percentage points, two decimals; `signed`: with + or -."""
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def interval(ci: tuple[float, float], sign: float = 1.0, *, signed: bool = False) -> str:
    """`ci` (times `sign`) in points, low end first: "[0.38, 0.58]"."""
    lo, hi = sorted((sign * ci[0], sign * ci[1]))
    return f"[{points(lo, signed=signed)}, {points(hi, signed=signed)}]"


def verdict(
    diff: float, ci: tuple[float, float], p: float, names: tuple[str, str], test_ci: tuple[float, float] | None = None
) -> str:
    """One sentence; with `test_ci` (the test-set bootstrap's interval) it names both intervals,
    and says so when only one of them excludes 0."""
    winner, loser, sign = (names[0], names[1], 1.0) if diff > 0 else (names[1], names[0], -1.0)
    seeds = f"95% CI {interval(ci, sign)}, {format_p(p)}"
    if test_ci is None:
        if p >= ALPHA:
            return (
                f"no significant difference: {names[0]} minus {names[1]} is {points(diff)} points,"
                f" 95% CI {interval(ci)}, {format_p(p)}"
            )
        return f"{winner} beats {loser} by {points(sign * diff)} points, {seeds}"
    holds = test_ci[0] > 0 or test_ci[1] < 0
    if p >= ALPHA:
        head = (
            f"no significant difference over seeds: {names[0]} minus {names[1]} is {points(diff)} points"
            f" (seeds: 95% CI {interval(ci)}, {format_p(p)})"
        )
        # The bootstrap resamples only the seeds there are: with few, it understates their spread.
        tail = "" if not holds else ", which excludes 0 while the seeds do not: more seeds (--seeds) settle it"
        return f"{head}; with test-set noise the 95% interval is {interval(test_ci)}{tail}"
    if holds and (test_ci[0] > 0) == (diff > 0):
        return (
            f"{winner} beats {loser} by {points(sign * diff)} points (seeds: {seeds};"
            f" with test-set noise: 95% interval {interval(test_ci, sign)})"
        )
    return (
        f"{winner} beats {loser} by {points(sign * diff)} points on these test images (seeds: {seeds}); with test-set"
        f" noise the 95% interval is {interval(test_ci, sign)}: not established for new data"
    )


# --- test-set noise -------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on one seed's paired predictions: only the images one model gets
    right count; under "no difference" each is equally likely to be either model's."""

    seed: int
    only_tuned_right: int
    only_baseline_right: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar(seed: int, tuned: np.ndarray, base: np.ndarray) -> McNemar:
    """Exact (binomial) McNemar test of two models' per-image correctness on the same images."""
    b, c = int((tuned & ~base).sum()), int((~tuned & base).sum())
    p = float(st.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return McNemar(seed, b, c, p)


@dataclass(frozen=True)
class BootstrapResult:
    ci95: tuple[float, float]  # 2.5 and 97.5 percentiles of the replicates' mean differences
    prob_improvement: float  # P(tuned > baseline) over (replicate, drawn seed) pairs; ties count half
    mcnemar: list[McNemar]
    differences: np.ndarray  # the replicates' mean differences (R,)

    @classmethod
    def from_comparison(cls, c: Comparison, differences: Sequence[float]) -> BootstrapResult | None:
        """Rebuilt from a comparison that carries the test-set statistics and the kept replicates."""
        if c.test_set_ci95 is None or c.prob_improvement is None or c.mcnemar is None:
            return None
        return cls(c.test_set_ci95, c.prob_improvement, [McNemar(**m) for m in c.mcnemar], np.asarray(differences))


def paired_bootstrap(
    tuned: np.ndarray, base: np.ndarray, seeds: Sequence[int], *, draws: int = 10_000, seed: int = 0
) -> BootstrapResult:
    """Paired statistics on per-image correctness, (S seeds, N test images) booleans each.

    Hierarchical bootstrap: a replicate draws S seeds with replacement, then for each drawn
    seed N test images with replacement, the same images for both models; its statistic is
    the mean over the drawn seeds of the accuracy difference on their images.  Only an
    image's outcome counts (tuned alone right, baseline alone right, or alike), so drawing
    N images is drawing those three counts from a multinomial: 10,000 replicates of
    5 x 10,000 take milliseconds.  scipy's `bootstrap` resamples one level only, hence
    the draws here.  (Drawing one test set shared by all seeds instead double-counts the
    per-image seed noise: 99-100% coverage of a 95% interval when the models are equal.)"""
    if tuned.shape != base.shape or tuned.ndim != 2:
        shapes = f"{tuned.shape} and {base.shape}"
        raise ConfigError(f"paired_bootstrap: need two (seeds, images) arrays of one shape, not {shapes}")
    s, n = tuned.shape
    only_tuned, only_base = (tuned & ~base).sum(1), (~tuned & base).sum(1)
    outcomes = np.stack([only_tuned, only_base, n - only_tuned - only_base], axis=1) / n  # (S, 3)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, s, (draws, s))  # seeds of each replicate
    counts = rng.multinomial(n, outcomes[drawn])  # (draws, S, 3): each drawn seed's resampled images
    per_seed = (counts[..., 0] - counts[..., 1]) / n
    lo, hi = np.percentile(per_seed.mean(1), [2.5, 97.5])
    wins = float(((per_seed > 0) + 0.5 * (per_seed == 0)).mean())
    tests = [mcnemar(k, tuned[i], base[i]) for i, k in enumerate(seeds)]
    return BootstrapResult((float(lo), float(hi)), wins, tests, per_seed.mean(1))


def with_test_set(c: Comparison, t: BootstrapResult, names: tuple[str, str]) -> Comparison:
    """`c` with the test-set statistics added and its verdict naming both intervals."""
    return replace(
        c,
        test_set_ci95=t.ci95,
        prob_improvement=t.prob_improvement,
        mcnemar=[m.to_dict() for m in t.mcnemar],
        verdict=verdict(c.difference, c.ci95, c.p_value, names, t.ci95),
    )


# --- what the search budget bought -------------------------------------------------------------


def expected_best(values: Sequence[float]) -> list[tuple[int, float, float]]:
    """Dodge et al.'s expected best of n draws from `values` (with replacement), for n = 1 .. N:
    (n, mean, std).  With v_(1) <= ... <= v_(N), P(max = v_(i)) = (i/N)^n - ((i-1)/N)^n."""
    v = np.sort(np.asarray(values, dtype=float))
    big_n = len(v)
    i = np.arange(1, big_n + 1)
    out = []
    for n in range(1, big_n + 1):
        w = (i / big_n) ** n - ((i - 1) / big_n) ** n
        mean = float((w * v).sum())
        out.append((n, mean, math.sqrt(max(0.0, float((w * v * v).sum()) - mean * mean))))
    return out
