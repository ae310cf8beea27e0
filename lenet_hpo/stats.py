"""Honest statistics for "is the tuned model better than the baseline, and by how much?"

Accuracies are fractions in [0, 1]; differences are reported in percentage points.
Runs of the two models share seeds, so the default test is the paired t-test on
the per-seed differences (the seed fixes initialisation and batch order for both);
Welch's t-test is used when the seeds do not pair up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "ci95": tuple(known["ci95"])})


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


def _pts(v: float) -> str:
    return f"{100 * v:.2f}"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(diff: float, ci: tuple[float, float], p: float, names: tuple[str, str]) -> str:
    if p >= ALPHA:
        interval = f"95% CI [{_pts(ci[0])}, {_pts(ci[1])}]"
        return (
            f"no significant difference: {names[0]} minus {names[1]} is {_pts(diff)} points, {interval}, {format_p(p)}"
        )
    if diff > 0:
        return (
            f"{names[0]} beats {names[1]} by {_pts(diff)} points, 95% CI [{_pts(ci[0])}, {_pts(ci[1])}], {format_p(p)}"
        )
    # state the interval of the winner's margin, so it reads as positive numbers
    return (
        f"{names[1]} beats {names[0]} by {_pts(-diff)} points, 95% CI [{_pts(-ci[1])}, {_pts(-ci[0])}], {format_p(p)}"
    )
