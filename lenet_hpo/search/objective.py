"""One trial: sample its config, train it with the shared `train()`, report and prune."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import torch

from lenet_hpo.config import TrialConfig
from lenet_hpo.data import Dataset
from lenet_hpo.model import build_model, count_macs
from lenet_hpo.search.space import StudySpec, suggest_config
from lenet_hpo.search.studies import is_baseline
from lenet_hpo.training import EpochStats, Probe, resolve_precision, train


class Objective:
    """Train one trial's config, report to Optuna as it trains, and prune when told to.

    A trial's steps are training images seen: it reports at the study's points inside
    epochs (on the fixed validation subset) and after every epoch (on the whole
    validation split, or on the subset before the last epoch with `val_subset_epochs`),
    so pruners can act on fractions of an epoch.  Its value is always the whole
    validation split after its full budget.

    `finished` is the number of the last trial this objective returned a result for:
    if Optuna then refuses to record it, that trial was failed by another worker."""

    def __init__(self, spec: StudySpec, data: Dataset, device: torch.device, on_start: Callable[[optuna.Trial], None]):
        self.spec, self.data, self.device, self.on_start = spec, data, device, on_start
        self.fit_size = len(data.train)
        self.subset = data.val_subset(spec.val_subset, spec.split_seed) if spec.val_subset else None
        self.finished: int | None = None

    def _record(self, trial: optuna.Trial, cfg: TrialConfig, precision: str) -> tuple[int, int]:
        """Set what a trial is (config, size, device, precision) as user attributes; (params, MACs)."""
        model = build_model(cfg, in_channels=self.data.channels, num_classes=self.data.num_classes)
        n_params, macs = sum(p.numel() for p in model.parameters()), count_macs(model, self.data.channels)
        attrs = {"config": cfg.to_dict(), "params": n_params, "macs": macs, "seed": cfg.seed,
                 "device": str(self.device), "precision": precision, "epochs_trained": 0.0, "seconds_trained": 0.0}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return n_params, macs

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.on_start(trial)  # the trial is RUNNING: let other workers claim theirs
        spec = self.spec
        cfg = suggest_config(trial, spec)
        precision = resolve_precision(spec.precision, cfg, self.device)
        n_params, macs = self._record(trial, cfg, precision)
        history: list[dict[str, float]] = []
        # The enqueued baseline is the study's reference point: it is reported like any
        # trial but never pruned, so the study shows where it stands after the full budget.
        # It is no candidate: a violated constraint keeps it out of TPE's good trials (a
        # sampler that learns from it searches the baseline's neighbourhood) and out of
        # study.best_trial.
        reference = is_baseline(trial)
        if reference:
            trial.set_constraint("reference", 1.0)

        def report(value: float, epochs: float, seconds: float) -> None:
            trial.set_user_attr("epochs_trained", epochs)
            trial.set_user_attr("seconds_trained", seconds)
            if spec.multi_objective:
                return
            trial.report(value, round(epochs * self.fit_size))
            # The baseline's rung results count for the others (should_prune records them), but it goes
            # on; and a trial that trained its whole budget completes, even where a rung falls there.
            if trial.should_prune() and not reference and epochs < cfg.epochs:
                trial.set_user_attr("outcome", "pruned")
                self.finished = trial.number
                raise optuna.TrialPruned(f"pruned after {epochs:g} epochs at validation accuracy {value:.4f}")

        def on_epoch(e: EpochStats) -> None:
            history.append(e.to_dict())
            trial.set_user_attr("history", history)
            trial.set_user_attr("seconds_per_epoch", sum(h["seconds"] for h in history) / len(history))
            report(e.eval_acc, e.epoch, sum(h["seconds"] for h in history))

        result = train(
            cfg, self.data, device=self.device, on_epoch=on_epoch, precision=precision,
            probe=Probe(spec.report_points(), self.subset, lambda p: report(p.acc, p.epoch, p.seconds),
                        spec.val_subset_epochs),
        )
        self.finished = trial.number
        if result.outcome == "diverged":
            epoch = len(result.history)
            trial.set_user_attr("outcome", "diverged")
            trial.set_user_attr("fail_reason", f"loss became NaN/inf in epoch {epoch}")
            if spec.multi_objective:
                raise RuntimeError(f"diverged: loss became NaN/inf in epoch {epoch}")
            raise optuna.TrialPruned(f"diverged: loss became NaN/inf in epoch {epoch}")
        trial.set_user_attr("outcome", "completed")
        value = result.history[-1].eval_acc
        if spec.multi_objective:
            return value, float(n_params if spec.objectives[1] == "params" else macs)
        return value


