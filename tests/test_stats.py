import numpy as np
import pytest

from autotelic.stats import bootstrap_ci, iqm


def test_iqm_of_eight_values_is_the_mean_of_the_middle_four():
    assert iqm([100, 1, 2, 3, 4, 5, 6, -100]) == pytest.approx((2 + 3 + 4 + 5) / 4)


def test_iqm_of_five_values_weights_the_quartile_boundaries():
    # n=5: the middle 50% is 2.5 values: half of the 2nd, all of the 3rd, ... half of the 4th
    assert iqm([1, 2, 3, 4, 50]) == pytest.approx((0.75 * 2 + 3 + 0.75 * 4) / 2.5)


def test_bootstrap_interval_brackets_the_point_and_shrinks_with_more_runs():
    rng = np.random.default_rng(0)
    small = rng.normal(size=5)
    large = rng.normal(size=200)
    p1, lo1, hi1 = bootstrap_ci([small])
    p2, lo2, hi2 = bootstrap_ci([large])
    assert lo1 <= p1 <= hi1 and lo2 <= p2 <= hi2
    assert hi2 - lo2 < (hi1 - lo1) / 2
    assert lo2 < 0 < hi2


def test_constant_runs_have_a_zero_width_interval():
    assert bootstrap_ci([[0.5] * 5, [0.7] * 5]) == pytest.approx((0.6, 0.6, 0.6))
