"""When is the comparison settled?  A group-sequential paired t-test over seed pairs.

retrain-best trains the tuned model and the baseline on seed 0, 1, ... and looks at the
paired differences after each pair.  Stopping at the first look with p < 0.05 would be
wrong: with five looks it declares a difference between equal models about twice as
often as the 5% it claims.  Here each look may spend only its share of the error rate:
the Lan-DeMets spending function of O'Brien-Fleming type, alpha(t) = 2 - 2 Phi(z_{1-alpha/2}
/ sqrt(t)) with t = pairs / the most pairs, gives look k the level alpha(t_k) - alpha(t_{k-1}).
Those levels add up to alpha, so by the union bound the chance that any look declares a
difference between equal models is at most alpha, whatever the correlation between
looks (the exact group-sequential boundaries would spend it a little more boldly;
`tests/test_sequential.py` measures the rate by simulation).  Early looks get little
(at 2 of 5 pairs, 0.002), so a verdict stops early only when it is clear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from lenet_hpo.errors import ConfigError
from lenet_hpo.stats import ALPHA, format_p

FIRST_LOOK = 2  # a paired t-test needs two pairs


def spent(t: float, alpha: float = ALPHA) -> float:
    """The error rate spent by information fraction t (O'Brien-Fleming-type spending)."""
    if t <= 0:
        return 0.0
    return float(2 - 2 * st.norm.cdf(st.norm.ppf(1 - alpha / 2) / math.sqrt(min(t, 1.0))))


def levels(max_pairs: int, alpha: float = ALPHA) -> dict[int, float]:
    """The level of the look after n pairs, n = FIRST_LOOK .. max_pairs (they add up to alpha)."""
    if max_pairs < FIRST_LOOK:
        raise ConfigError(f"seeds: need at least {FIRST_LOOK} seed pairs to compare, not {max_pairs}")
    out, before = {}, 0.0
    for n in range(FIRST_LOOK, max_pairs + 1):
        now = spent(n / max_pairs, alpha)
        out[n] = now - before
        before = now
    return out


def paired_p(differences: Sequence[float]) -> float:
    """Two-sided p of the paired t-test on per-seed differences (0 or 1 where they do not vary)."""
    d = np.asarray(differences, dtype=float)
    if d.std(ddof=1) == 0:
        return 1.0 if d.mean() == 0 else 0.0
    return float(st.ttest_1samp(d, 0.0).pvalue)


@dataclass(frozen=True)
class Look:
    """The comparison after `pairs` seed pairs."""

    pairs: int
    max_pairs: int
    difference: float  # mean tuned minus baseline
    p_value: float
    level: float  # what this look may spend; settled when p_value < level
    settled: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        """e.g. "after 3 of at most 5 seed pairs: +0.48 points, p = 0.0031 (settles below 0.0095): settled"."""
        head = f"after {self.pairs} of at most {self.max_pairs} seed pairs: {100 * self.difference:+.2f} points"
        state = "settled" if self.settled else ("not settled" if self.pairs == self.max_pairs else "going on")
        return f"{head}, {format_p(self.p_value)} (settles below {self.level:.2g}): {state}"


def look(differences: Sequence[float], max_pairs: int, alpha: float = ALPHA) -> Look:
    """The look after len(differences) pairs."""
    n = len(differences)
    level = levels(max_pairs, alpha).get(n)
    if level is None:
        raise ConfigError(f"a look needs {FIRST_LOOK} to {max_pairs} seed pairs, not {n}")
    p = paired_p(differences)
    return Look(n, max_pairs, float(np.mean(differences)), p, level, p < level)


@dataclass(frozen=True)
class Stopping:
    """How the seeds were decided: the looks taken, and why the runs stopped."""

    early_stop: bool
    max_pairs: int
    looks: tuple[Look, ...]

    @property
    def pairs(self) -> int:
        return self.looks[-1].pairs if self.looks else 0

    @property
    def settled(self) -> bool:
        return bool(self.looks) and self.looks[-1].settled

    def reason(self) -> str:
        """e.g. "settled after 3 of at most 5 seed pairs: p = 0.0031 < 0.0095"."""
        if not self.early_stop:
            return f"fixed design: all {self.max_pairs} seed pairs (--no-early-stop)"
        last = self.looks[-1]
        if last.settled:
            return (f"settled after {last.pairs} of at most {self.max_pairs} seed pairs:"
                    f" {format_p(last.p_value)} < {last.level:.2g}")
        return (f"not settled after all {self.max_pairs} seed pairs: {format_p(last.p_value)}"
                f" (needed < {last.level:.2g} at the last look)")

    def to_dict(self) -> dict[str, Any]:
        return {"early_stop": self.early_stop, "max_pairs": self.max_pairs, "pairs": self.pairs,
                "settled": self.settled, "reason": self.reason(), "looks": [x.to_dict() for x in self.looks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stopping:
        return cls(d["early_stop"], d["max_pairs"], tuple(Look(**x) for x in d["looks"]))
