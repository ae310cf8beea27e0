"""How sure are we?  The report's account reads what retrain-best computed and the study's trials."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from lenet_hpo.confidence import NOT_AVAILABLE, budget_sentences, how_sure, numbers_table, sentences
from lenet_hpo.search.studies import BASELINE_ROLE, ROLE, StoredStudy


def study_with(values, baseline):
    s = optuna.create_study(direction="maximize")
    dist = {"lr": FloatDistribution(1e-4, 1.0, log=True)}
    s.add_trial(create_trial(value=baseline, params={"lr": 0.01}, distributions=dist,
                             user_attrs={ROLE: BASELINE_ROLE}))
    for v in values:
        s.add_trial(create_trial(value=v, params={"lr": 0.01}, distributions=dist))
    return StoredStudy(s, {"val_subset": {"images": 100}})


def test_the_expected_best_passes_the_baseline_trial_at_the_first_n_whose_mean_is_above_it(retrained):
    result = retrained[2]
    # sorted 0.40, 0.45, 0.60: one trial expects 0.4833 (below 0.5), two 0.40/9 + 0.45*3/9 + 0.60*5/9 = 0.5278
    c = how_sure(result, study_with([0.40, 0.60, 0.45], baseline=0.5))
    assert [round(m, 4) for _, m, _ in c.expected] == [0.4833, 0.5278, 0.5537]
    assert c.trials_to_beat_baseline == 2 and c.baseline_value == 0.5
    assert "It passes the baseline trial's 50.00% after 2 trial(s)." in budget_sentences(c)[0]
    never = how_sure(result, study_with([0.40, 0.45], baseline=0.9))
    assert never.trials_to_beat_baseline is None and "It never passes" in budget_sentences(never)[0]


def test_the_statistics_are_the_ones_retrain_best_kept(retrained):
    result = retrained[2]
    c = how_sure(result, study_with([0.9], baseline=0.8))
    assert c.comparison == result.difference and c.test_set is not None
    kept = list(result.test_set_differences)
    assert c.test_set.differences.tolist() == kept and len(kept) == 10_000
    assert c.test_set.ci95 == result.difference.test_set_ci95
    table = dict(numbers_table(c).values.tolist())
    lo, hi = result.difference.test_set_ci95
    assert table["95% interval, seeds and test images resampled"] == f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
    assert table["difference (tuned - baseline), points"] == f"{100 * result.difference.difference:+.2f}"


def test_without_kept_predictions_the_test_set_part_says_it_is_not_available(retrained):
    from dataclasses import replace

    result = replace(retrained[2], test_set_differences=())
    c = how_sure(result, study_with([0.9], baseline=0.8))
    assert c.test_set is None
    assert sentences(c)[-1] == f"Test-set statistics: {NOT_AVAILABLE}."
    with pytest.raises(KeyError):
        dict(numbers_table(c).values.tolist())["P(tuned more accurate), over (seed, test set) draws"]
