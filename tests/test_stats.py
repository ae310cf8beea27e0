import itertools
import math
import statistics

import numpy as np
import pytest
from scipy import stats as st

from lenet_hpo.stats import (
    compare,
    expected_best,
    mcnemar,
    paired_bootstrap,
    summarize,
    verdict,
    with_test_set,
)

NAMES = ("the tuned model", "the baseline")


def test_summary_against_known_values():
    s = summarize([0.990, 0.992, 0.994])
    assert s.mean == pytest.approx(0.992)
    assert s.std == pytest.approx(0.002)
    half = 4.302652729911275 * 0.002 / math.sqrt(3)  # t(0.975, 2)
    assert s.ci95 == pytest.approx((0.992 - half, 0.992 + half))
    assert summarize([1.0, 0.99, 1.0]).ci95[1] == 1.0  # accuracies: the interval stays in [0, 1]
    one = summarize([0.5])
    assert one.std == 0 and math.isnan(one.ci95[0])
    with pytest.raises(ValueError):
        summarize([])


def test_paired_comparison_against_known_values():
    tuned = [0.9940, 0.9945, 0.9938, 0.9950, 0.9942]
    base = [0.9910, 0.9905, 0.9912, 0.9915, 0.9900]
    c = compare(tuned, base)
    d = [a - b for a, b in zip(tuned, base, strict=True)]
    assert c.test == "paired t-test" and c.n == 5
    assert c.difference == pytest.approx(sum(d) / 5)
    assert c.p_value == pytest.approx(st.ttest_rel(tuned, base).pvalue)
    sd = st.tstd(d)
    assert c.effect_size == pytest.approx((sum(d) / 5) / sd)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, 4)
    assert c.ci95 == pytest.approx((c.difference - half, c.difference + half))
    assert c.significant
    assert c.verdict.startswith("the tuned model beats the baseline by 0.35 points, 95% CI [")
    assert "p < 0.001" in c.verdict


def test_textbook_paired_example():
    # differences 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5), t = 3 / (sqrt(2.5)/sqrt(5)) = 4.2426, p = 0.01324
    c = compare([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert c.p_value == pytest.approx(0.013236, abs=1e-5)
    assert c.effect_size == pytest.approx(3 / math.sqrt(2.5))


def test_no_difference_and_baseline_wins():
    c = compare([0.990, 0.992, 0.991], [0.991, 0.990, 0.992])
    assert not c.significant and c.verdict.startswith("no significant difference")
    lose = compare([0.980, 0.981, 0.982, 0.980], [0.990, 0.991, 0.992, 0.991])
    assert lose.difference < 0 and lose.verdict.startswith("the baseline beats the tuned model by 1.03 points")
    lo, hi = (float(x) for x in lose.verdict.split("[")[1].split("]")[0].split(","))
    assert 0 < lo < 1.03 < hi


def test_welch_against_scipy():
    a, b = [0.99, 0.992, 0.991, 0.995], [0.985, 0.99, 0.987]
    c = compare(a, b, paired=False)
    assert c.test == "Welch t-test"
    assert c.p_value == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    ci = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert c.ci95 == pytest.approx((ci.low, ci.high))


def test_identical_runs_and_too_few():
    c = compare([0.99, 0.99], [0.98, 0.98])
    assert c.p_value == 0.0 and c.ci95 == (pytest.approx(0.01), pytest.approx(0.01))
    with pytest.raises(ValueError, match="at least two runs"):
        compare([0.9], [0.8])
    with pytest.raises(ValueError, match="same number of seeds"):
        compare([0.9, 0.8, 0.7], [0.8, 0.9])


# --- test-set noise ------------------------------------------------------------------------------


def test_mcnemar_agrees_with_statsmodels_exact():
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(20, 400))
        a, b = rng.random(n) < rng.uniform(0.5, 1), rng.random(n) < rng.uniform(0.5, 1)
        ours = mcnemar(3, a, b)
        table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
        assert (ours.only_tuned_right, ours.only_baseline_right) == (table[0][1], table[1][0])
        assert ours.p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)
    assert mcnemar(0, np.ones(5, bool), np.ones(5, bool)).p_value == 1.0  # no disagreement at all


def reference_bootstrap(tuned, base, draws, rng):
    """The hierarchical bootstrap as a plain loop: draw the seeds, then for each drawn seed
    its test images, and average the paired accuracy differences."""
    s, n = tuned.shape
    means = []
    for _ in range(draws):
        per_seed = []
        for k in rng.integers(0, s, s):
            images = rng.integers(0, n, n)
            per_seed.append(tuned[k, images].mean() - base[k, images].mean())
        means.append(statistics.fmean(per_seed))
    return np.array(means)


def test_the_vectorised_bootstrap_draws_what_a_slow_loop_draws():
    rng = np.random.default_rng(1)
    tuned, base = rng.random((4, 60)) < 0.8, rng.random((4, 60)) < 0.7
    fast = paired_bootstrap(tuned, base, range(4), draws=20_000, seed=5).differences
    slow = reference_bootstrap(tuned, base, 20_000, np.random.default_rng(6))
    assert fast.mean() == pytest.approx(slow.mean(), abs=0.002)  # Monte Carlo error: about 0.0004
    assert fast.std() == pytest.approx(slow.std(), rel=0.03)
    quantiles = [2.5, 25, 50, 75, 97.5]  # on a grid of 1/240: equal or one step apart
    assert np.percentile(fast, quantiles) == pytest.approx(np.percentile(slow, quantiles), abs=1 / 240 + 1e-9)


def paired_runs(rng, n_seeds, n_images, error_a, error_b):
    """Per-image correctness of two models on one freshly drawn test set of n_images: each
    image is hard with probability 0.05, where a model errs 10 times its overall error
    rate; easy images take the rest.  Each seed draws its errors anew; both models share
    the test set, and so its difficulty."""
    hard = rng.random(n_images) < 0.05

    def runs(error):
        on_hard = 10 * error
        p_wrong = np.where(hard, on_hard, (error - 0.05 * on_hard) / 0.95)
        return rng.random((n_seeds, n_images)) >= p_wrong

    return runs(error_a), runs(error_b)


def test_equal_models_get_an_interval_covering_zero_about_95_percent_of_the_time():
    """Calibration: 200 repetitions, each a new test set of 2,000 images and 5 seeds of two
    models with the same error rate.  Tolerance: 89% to 99% coverage (95% +- about 3
    binomial standard errors of 200 repetitions; the two-stage bootstrap runs a little
    wide, 97-98% in longer simulations)."""
    rng = np.random.default_rng(2)
    covered = 0
    for k in range(200):
        a, b = paired_runs(rng, 5, 2000, 0.02, 0.02)
        lo, hi = paired_bootstrap(a, b, range(5), draws=1000, seed=k).ci95
        covered += lo <= 0 <= hi
    assert 0.89 <= covered / 200 <= 0.99


def test_a_clearly_better_model_is_found_better():
    rng = np.random.default_rng(3)
    a, b = paired_runs(rng, 5, 10_000, 0.006, 0.012)
    t = paired_bootstrap(a, b, range(5))
    assert t.ci95[0] > 0 and t.prob_improvement > 0.99
    assert all(m.p_value < 0.05 and m.only_tuned_right > m.only_baseline_right for m in t.mcnemar)
    c = compare(a.mean(1), b.mean(1))
    assert c.p_value < 0.001 and with_test_set(c, t, NAMES).verdict.startswith("the tuned model beats the baseline by")


def test_the_verdict_names_both_intervals_and_says_when_they_disagree():
    c = compare([0.9952, 0.9950, 0.9954, 0.9951, 0.9953], [0.9940, 0.9941, 0.9939, 0.9942, 0.9940])
    shaky = verdict(c.difference, c.ci95, c.p_value, NAMES, (-0.0002, 0.0026))
    assert "on these test images (seeds: 95% CI [" in shaky
    assert "with test-set noise the 95% interval is [-0.02, 0.26]" in shaky
    assert shaky.endswith("not established for new data")
    solid = verdict(c.difference, c.ci95, c.p_value, NAMES, (0.0004, 0.0020))
    assert "with test-set noise: 95% interval [0.04, 0.20])" in solid and "not established" not in solid
    assert verdict(c.difference, c.ci95, c.p_value, NAMES) == c.verdict  # without test-set statistics: as before


def test_a_verdict_the_seeds_do_not_carry_says_so_whatever_the_test_set_interval():
    c = compare([0.84, 0.64], [0.62, 0.62])  # 2 seeds that disagree: p > 0.05
    assert c.p_value > 0.05
    both = verdict(c.difference, c.ci95, c.p_value, NAMES, (-0.01, 0.30))
    assert both.startswith("no significant difference over seeds") and both.endswith("[-1.00, 30.00]")
    split = verdict(c.difference, c.ci95, c.p_value, NAMES, (0.16, 0.25))
    assert split.endswith("[16.00, 25.00], which excludes 0 while the seeds do not: more seeds (--seeds) settle it")


# --- what the search budget bought -----------------------------------------------------------------


def test_expected_best_equals_enumerating_every_draw():
    values = [0.91, 0.97, 0.95, 0.97, 0.80]
    for n, mean, std in expected_best(values):
        maxima = [max(draw) for draw in itertools.product(values, repeat=n)]
        assert mean == pytest.approx(statistics.fmean(maxima), abs=1e-12)
        assert std == pytest.approx(statistics.pstdev(maxima), abs=1e-9)
    assert [n for n, _, _ in expected_best(values)] == [1, 2, 3, 4, 5]
