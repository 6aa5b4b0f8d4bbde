"""Intervals of the reports against hand computations."""

import math

import pytest

from clarep_fast.pipeline.evaluate.statistics import (
    detectable_difference,
    holm_rejected,
    paired_difference,
    paired_p_value,
    seeds_needed,
    t_interval,
    wilson_interval,
)


def test_t_interval_by_hand():
    values = [0.90, 0.92, 0.94]  # mean 0.92, s = 0.02, t_{0.975, 2} = 4.302653
    interval = t_interval(values)
    assert interval.mean == pytest.approx(0.92) and interval.half_width == pytest.approx(
        4.302653 * 0.02 / math.sqrt(3), rel=1e-6
    )
    assert interval.describe() == "92.0 ± 5.0"
    single = t_interval([0.5])
    assert single.half_width is None and single.significant is None and single.describe() == "50.0"


def test_paired_difference_removes_the_shared_seed_effect():
    control = [0.80, 0.90, 0.70, 0.85, 0.75]  # seeds differ a lot
    treated = [c + 0.01 for c in control]  # but the treatment adds exactly one point to each
    assert paired_difference(treated, control).significant  # differences all 0.01: zero spread
    assert not t_interval(treated).half_width < 0.01  # unpaired, the seed spread would hide it
    mixed = paired_difference([0.8, 0.9, 0.7], [0.81, 0.88, 0.71])
    assert mixed.significant is False
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.1], [0.1, 0.2])


def test_wilson_interval_known_values():
    low, high = wilson_interval(459, 500)  # the embedded teacher's class consistency
    assert (round(low, 4), round(high, 4)) == (0.8906, 0.939)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(10, 10)[1] == pytest.approx(
        1.0
    )
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)  # the textbook 10/10 lower bound
    with pytest.raises(ValueError):
        wilson_interval(5, 0)


def test_detectable_difference_and_seeds_needed_by_hand():
    values = [0.01, 0.03, 0.02, 0.04, 0.00]  # s = 0.0158114, n = 5
    spread = 0.015811388
    # t_{0.975, 4} = 2.776445, t_{0.8, 4} = 0.940965
    assert detectable_difference(values) == pytest.approx((2.776445 + 0.940965) * spread / math.sqrt(5), rel=1e-5)
    assert detectable_difference([0.3]) is None
    # the study as it is detects exactly its own detectable difference; one seed fewer does not
    assert seeds_needed(values, detectable_difference(values) * (1 + 1e-9)) == 5
    assert seeds_needed(values, detectable_difference(values) * 0.999) == 6
    # a quarter of it: the normal rule n = ((z_0.975 + z_0.8) s / δ)² = 45.4 seeds, a few more with t quantiles
    many = seeds_needed(values, detectable_difference(values) / 4)
    assert ((1.959964 + 0.841621) * spread / (detectable_difference(values) / 4)) ** 2 == pytest.approx(45.4, abs=0.1)
    assert 46 <= many <= 50
    assert seeds_needed(values, 0.0) is None and seeds_needed([0.1], 0.1) is None
    assert seeds_needed(values, 1e-9, limit=50) == 50


def test_paired_p_value_agrees_with_the_interval_and_holm_steps_down():
    values = [0.01, 0.03, 0.02, 0.04, 0.00]  # mean 0.02, s/sqrt(n) = 0.0070711: t = 2.828427, 4 df
    assert paired_p_value(values) == pytest.approx(0.047421, abs=1e-5)  # scipy.stats.ttest_1samp's value
    assert paired_p_value(values) < 0.05 and t_interval(values).significant
    shifted = [v - 0.005 for v in values]
    assert paired_p_value(shifted) > 0.05 and not t_interval(shifted).significant
    assert paired_p_value([0.02] * 3) == 0.0 and paired_p_value([0.0] * 3) == 1.0 and paired_p_value([0.1]) is None
    # m = 4: thresholds 0.0125, 0.0167, 0.025, 0.05 in order; 0.02 fails the second, so the step-down stops
    assert holm_rejected({"a": 0.001, "b": 0.02, "c": 0.021, "d": 0.04}) == ["a"]
    assert holm_rejected({"a": 0.01, "b": 0.015, "c": 0.02, "d": 0.04}) == ["a", "b", "c", "d"]
    assert holm_rejected({"a": 0.3}) == [] and holm_rejected({}) == []
