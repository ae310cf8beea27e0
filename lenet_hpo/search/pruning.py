"""A percentile pruner that knows the noise of its checks.

A trial's reports are accuracies on a check of k validation images, so each has a standard
error of about sqrt(a (1 - a) / k): 0.12 points at 99.3% on 5,000 images.  Optuna's
`PercentilePruner` stops a trial that is below the reference (a percentile of the completed
trials at the same step) by any margin, and at late steps, where the good trials lie within
a tenth of a point of each other, that is a coin toss that throws away the most training.
`NoisePruner` asks the percentile pruner first (startup trials, warm-up, interval and the
percentile are Optuna's) and then stops only a trial whose gap to the reference is larger
than `z` standard errors of the difference of two such checks.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.pruners import BasePruner, PercentilePruner
from optuna.trial import FrozenTrial, TrialState


def check_noise(a: float, b: float, images: int) -> float:
    """The standard error of the difference of two accuracies, each measured on `images` images
    (as if independent: the trials share the images, so this errs on the side of keeping)."""
    a, b = min(max(a, 0.0), 1.0), min(max(b, 0.0), 1.0)
    return math.sqrt((a * (1 - a) + b * (1 - b)) / images)


class NoisePruner(BasePruner):
    """Prune where `PercentilePruner` would and the trial is clearly worse: its last value is more
    than `z` standard errors (`check_noise`, checks of `images` images) below the reference."""

    def __init__(
        self,
        percentile: float,
        images: int,
        *,
        z: float = 2.0,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 0,
        interval_steps: int = 1,
        n_min_trials: int = 1,
    ) -> None:
        if images < 1:
            raise ValueError(f"images must be a positive number of validation images, not {images}")
        if not z >= 0:
            raise ValueError(f"z must be a number of standard errors >= 0, not {z}")
        self._inner = PercentilePruner(
            percentile, n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps,
            interval_steps=interval_steps, n_min_trials=n_min_trials,
        )
        self.percentile, self.images, self.z = percentile, images, z

    def reference(self, study: optuna.Study, step: int) -> float:
        """The percentile of the completed trials' values at `step` (NaN where none reported there)."""
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
        if not values:
            return math.nan
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        return float(np.nanpercentile(values, 100 - self.percentile if maximize else self.percentile))

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not self._inner.prune(study, trial):
            return False
        step = trial.last_step
        value = trial.intermediate_values[step] if step is not None else math.nan
        ref = self.reference(study, step) if step is not None else math.nan
        if math.isnan(value) or math.isnan(ref):
            return True  # a diverged trial, as the percentile pruner decided
        gap = ref - value if study.direction == optuna.study.StudyDirection.MAXIMIZE else value - ref
        return gap > self.z * check_noise(ref, value, self.images)
