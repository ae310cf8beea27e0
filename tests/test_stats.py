import math

import pytest
from scipy import stats as st

from lenet_hpo.stats import compare, summarize


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
