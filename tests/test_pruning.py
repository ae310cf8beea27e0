"""The noise pruner: a trial within its check's noise of the reference goes on, a clearly worse one stops."""

import math

import optuna
import pytest

from lenet_hpo.search.pruning import NoisePruner, check_noise
from lenet_hpo.search.studyfile import load_spec, parse_spec

STEP = 100


def study_with(pruner, done=(0.993, 0.994, 0.995), step=STEP):
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for v in done:  # completed trials that reported at `step`
        t = study.ask()
        t.report(v, step)
        study.tell(t, v)
    return study


def verdict(study, value, step=STEP):
    t = study.ask()
    t.report(value, step)
    return t.should_prune()


def test_noise_of_a_check():
    assert check_noise(0.993, 0.993, 5000) == pytest.approx(math.sqrt(2 * 0.993 * 0.007 / 5000))  # 0.17 points


def test_keeps_a_trial_within_the_checks_noise_and_prunes_a_clearly_worse_one():
    pruner = NoisePruner(25.0, images=5000, z=2.0, n_startup_trials=1)
    study = study_with(pruner)
    ref = pruner.reference(study, STEP)
    assert ref == pytest.approx(0.9945)  # the 75th percentile of the completed trials
    assert not verdict(study, 0.9930)  # 0.15 points behind: under 2 SE (0.29 points), a tie at this check
    assert verdict(study, 0.9900)  # 0.45 points behind: clearly worse
    assert not verdict(study, 0.9950)  # ahead of the reference


def test_the_percentile_pruner_alone_would_cut_the_tie():
    study = study_with(optuna.pruners.PercentilePruner(25.0, n_startup_trials=1))
    assert verdict(study, 0.9930)


def test_larger_checks_see_smaller_gaps():
    study = study_with(NoisePruner(25.0, images=100_000, z=2.0, n_startup_trials=1))
    assert verdict(study, 0.9930)  # 0.15 points is 2.3 SE on 100,000 images


def test_a_diverged_trial_is_pruned_and_warmup_holds():
    assert verdict(study_with(NoisePruner(25.0, images=5000, n_startup_trials=1)), float("nan"))
    assert not verdict(study_with(NoisePruner(25.0, images=5000, n_startup_trials=1, n_warmup_steps=2 * STEP)), 0.5)


def test_a_study_file_names_it_and_its_options_are_checked():
    raw = {"study": {"dataset": "synthetic", "epochs": 2},
           "pruner": {"name": "noise", "percentile": 25.0, "z": 2.0, "n_warmup_steps": 0.5}}
    pruner = parse_spec(raw, name="n").make_pruner(fit_size=1000, check_images=500)
    assert isinstance(pruner, NoisePruner) and pruner.images == 500 and pruner.z == 2.0
    with pytest.raises(Exception, match="pruner: .*z"):
        parse_spec({**raw, "pruner": {"name": "noise", "percentile": 25.0, "z": -1}}, name="n")


def test_the_default_study_keeps_a_tie_with_the_best_and_stops_a_clearly_worse_trial():
    spec = load_spec("mnist")
    pruner = spec.make_pruner(fit_size=50_000, check_images=spec.check_images(10_000))
    epoch = 50_000  # steps are training images: after the first epoch, on the 5,000-image check
    study = study_with(pruner, step=epoch)
    assert pruner.reference(study, epoch) == pytest.approx(0.995)  # the best completed trial, not a percentile
    assert not verdict(study, 0.9930, step=epoch)  # 0.20 points behind the best: under 1.5 SE (0.24 points)
    assert verdict(study, 0.9910, step=epoch)  # 0.40 points behind: clearly worse
