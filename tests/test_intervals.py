"""Verdicts read off intervals (core.judging) and the bootstrap that makes them (core.intervals), on
synthetic figures whose answer is known."""

import numpy as np
import pytest

from minilora.experiments.core import (FAILS, HOLDS, ONE_RUN, PARTLY, combine, inconclusive, judge_interval,
                                       non_inferiority, verdict_range, worst)
from minilora.experiments.core.intervals import (mean_difference_interval, per_round_times, per_seed_rows,
                                                 percentile_interval, repeat_replicates, replicate_means,
                                                 round_ratio_replicates, spread_factors)

# -- verdicts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval, expected", [
    ([0.92, 0.99], HOLDS),  # above both thresholds
    ([0.62, 0.89], PARTLY),  # between them
    ([0.10, 0.55], FAILS),  # below both
    ([0.85, 0.95], inconclusive(PARTLY, HOLDS)),  # straddles the holds line
    ([0.50, 0.70], inconclusive(FAILS, PARTLY)),  # straddles the partly line
    ([0.50, 0.95], inconclusive(FAILS, HOLDS)),  # straddles both
    (None, ONE_RUN),
])
def test_judge_interval_higher_is_better(interval, expected):
    assert judge_interval(interval, 0.9, 0.6) == expected


def test_judge_interval_upper_bounds_and_the_words():
    assert judge_interval([0.01, 0.02], 0.03, 0.10, higher_is_better=False) == HOLDS
    assert judge_interval([0.02, 0.05], 0.03, 0.10, higher_is_better=False) == "partly or holds — inconclusive"
    assert judge_interval([float("nan")] * 2, 0.03, 0.10, higher_is_better=False) == FAILS  # nothing measured


@pytest.mark.parametrize("low, expected", [
    (-0.0299, HOLDS), (-0.0301, inconclusive(PARTLY, HOLDS)), (-0.0999, inconclusive(PARTLY, HOLDS)),
    (-0.1001, inconclusive(FAILS, HOLDS)),
])
def test_non_inferiority_at_its_margins(low, expected):
    """LoRA - full's lower bound against -3 and -10 points; the upper bound is above zero throughout."""
    assert non_inferiority([low, 0.02], 0.03, 0.10) == expected


def test_non_inferiority_never_counts_doing_better_against_the_method():
    assert non_inferiority([0.05, 0.40], 0.03, 0.10) == HOLDS  # far better than the reference: still "holds"
    assert non_inferiority([-0.08, -0.04], 0.03, 0.10) == PARTLY  # clearly below by 4-8 points
    assert non_inferiority([-0.30, -0.12], 0.03, 0.10) == FAILS
    with pytest.raises(ValueError, match="margin_holds"):
        non_inferiority([0, 0], 0.10, 0.03)


def test_combine_keeps_what_inconclusive_parts_allow():
    assert combine(HOLDS, HOLDS) == HOLDS and combine(FAILS, FAILS) == FAILS and combine(HOLDS, FAILS) == PARTLY
    assert combine(HOLDS, inconclusive(PARTLY, HOLDS)) == inconclusive(PARTLY, HOLDS)
    assert combine(FAILS, inconclusive(FAILS, HOLDS)) == inconclusive(FAILS, PARTLY)
    assert combine(HOLDS, ONE_RUN) == inconclusive(PARTLY, HOLDS)
    assert combine(ONE_RUN) == combine(ONE_RUN, inconclusive(FAILS, HOLDS)) == ONE_RUN  # the reason is kept
    assert verdict_range(ONE_RUN) == (FAILS, HOLDS)
    with pytest.raises(ValueError, match="not a verdict"):
        verdict_range("maybe")


def test_worst_keeps_the_worst_at_both_ends():
    assert worst(HOLDS, PARTLY) == PARTLY and worst(HOLDS, HOLDS) == HOLDS
    assert worst(HOLDS, inconclusive(PARTLY, HOLDS)) == inconclusive(PARTLY, HOLDS)
    assert worst(PARTLY, inconclusive(FAILS, HOLDS)) == inconclusive(FAILS, PARTLY)
    assert worst(FAILS, inconclusive(PARTLY, HOLDS)) == FAILS  # one setting fails whatever the other does
    assert worst(ONE_RUN, ONE_RUN) == ONE_RUN


# -- the bootstrap ------------------------------------------------------------------------------------------


def bernoulli(p, seeds, rows, rng, seed_sd=0.0):
    """(seeds, rows) 0/1 figures: each seed's accuracy p + N(0, seed_sd)."""
    ps = np.clip(p + seed_sd * rng.standard_normal(seeds), 0, 1)
    return (rng.random((seeds, rows)) < ps[:, None]).astype(float)


def test_rows_are_paired_between_arms():
    """The rows are drawn once for both arms: arms whose every seed scores the same rows alike differ by
    exactly nothing in every replicate, though each arm's own mean varies with the rows drawn."""
    a = np.tile(bernoulli(0.7, 1, 200, np.random.default_rng(0)), (5, 1))
    assert mean_difference_interval(a, a.copy()) == [0.0, 0.0]
    low, high = percentile_interval(replicate_means({"a": a})["a"])
    assert high - low > 0.05  # about 4 binomial standard errors of 200 rows: 4 * sqrt(0.21 / 200) = 0.13


def test_a_known_difference_is_inside_its_interval():
    rng = np.random.default_rng(1)
    new, ref = bernoulli(0.80, 5, 400, rng, 0.02), bernoulli(0.70, 5, 400, rng, 0.02)
    low, high = mean_difference_interval(new, ref)
    assert low < 0.10 < high and low > 0.0 and high - low < 0.15


def test_both_levels_count():
    """Seeds that disagree widen the interval beyond what the rows alone give; more rows narrow it."""
    rng = np.random.default_rng(2)
    width = lambda a: np.subtract(*percentile_interval(replicate_means({"a": a})["a"])[::-1])  # noqa: E731
    calm, spread = bernoulli(0.6, 5, 300, rng), bernoulli(0.6, 5, 300, rng, seed_sd=0.15)
    assert width(spread) > 1.5 * width(calm)
    assert width(bernoulli(0.6, 5, 1200, rng)) < 0.7 * width(calm)


def test_one_run_has_no_interval_and_missing_rows_name_the_claim():
    one = np.ones((1, 50))
    assert mean_difference_interval(one, np.ones((3, 50))) is None
    with pytest.raises(ValueError, match="claim 4: classification: the per-row test figures"):
        per_seed_rows([[1.0, 0.0], None], 4, "classification")
    with pytest.raises(ValueError, match="different numbers of test rows"):
        per_seed_rows([[1.0, 0.0], [1.0]], 4, "classification")
    with pytest.raises(ValueError, match="same rows in every arm"):
        replicate_means({"a": np.ones((2, 3)), "b": np.ones((2, 4))})


def test_timing_rounds_are_drawn_together():
    """A round's variants ran moments apart: resampled together, a variant exactly twice as slow in every
    round has a ratio of exactly 2, however noisy the rounds are."""
    base = np.random.default_rng(3).lognormal(0, 0.5, 16)
    reps = repeat_replicates({"base": base, "slow": 2 * base})
    ratio = np.median(reps["slow"], axis=1) / np.median(reps["base"], axis=1)
    assert percentile_interval(ratio) == pytest.approx([2.0, 2.0])
    with pytest.raises(ValueError, match="same number"):
        repeat_replicates({"a": [1.0, 2.0], "b": [1.0]})


def test_infinite_replicates_stay_at_their_end():
    samples = np.r_[np.linspace(0, 1, 999), np.inf]
    low, high = percentile_interval(samples)
    assert np.isfinite(low) and 0.02 < low < 0.03 and high <= 1.0


def test_round_ratios_are_medians_of_each_rounds_ratio():
    """As ``time_rounds`` reads them: a variant 1.5 times the base in every round is 1.5 in every replicate,
    however the machine's speed varied between rounds; a missing round record names the claim."""
    base = np.random.default_rng(4).lognormal(0, 0.5, 12)
    reps = round_ratio_replicates({"base": base, "slow": 1.5 * base, "same": base}, "base")
    assert set(reps) == {"slow", "same"} and np.allclose(reps["slow"], 1.5) and np.allclose(reps["same"], 1.0)
    with pytest.raises(ValueError, match=r"claim 7 \(inference\): toy, B=1: the per-round times .* missing"):
        per_round_times({"base": 1.0, "merged/base": 1.0}, "7 (inference)", "toy, B=1")


def test_spread_factors_cover_the_true_spread():
    """For normal draws, sigma lies in [s / high, s / low] 95% of the time; one seed has no spread."""
    low, high = spread_factors(3)
    s = np.random.default_rng(5).standard_normal((4000, 3)).std(axis=1, ddof=1)  # true sigma = 1
    assert 0.93 < np.mean((s / high <= 1) & (1 <= s / low)) < 0.97
    assert spread_factors(1) is None and spread_factors(2)[0] < low < high < spread_factors(2)[1]
