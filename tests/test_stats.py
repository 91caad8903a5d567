"""seglm.stats: bootstrap intervals over seeds and examples, paired tests, McNemar."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from seglm.stats import (
    bootstrap_mean,
    bootstrap_means,
    holm,
    mcnemar_exact,
    paired_difference,
    relative_gain,
    sign_flip_p_value,
)


def binary(n: int, rate: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < rate).astype(float)


def test_interval_covers_the_mean_and_shrinks_with_more_examples() -> None:
    small = bootstrap_mean(binary(50, 0.4, 0), resamples=1000)
    large = bootstrap_mean(binary(2000, 0.4, 0), resamples=1000)
    for estimate in (small, large):
        assert estimate.low < estimate.mean < estimate.high
    assert (large.high - large.low) < 0.4 * (small.high - small.low)


def test_interval_matches_the_normal_approximation_for_one_seed() -> None:
    values = binary(1000, 0.3, 1)
    estimate = bootstrap_mean(values, resamples=4000)
    half_width = 1.96 * values.std() / math.sqrt(values.size)
    assert estimate.mean == pytest.approx(values.mean())
    assert estimate.high - estimate.low == pytest.approx(2 * half_width, rel=0.1)


def test_seeds_are_resampled_too() -> None:
    # Seed 0 gets every example wrong, seed 1 every one right: resampling examples alone would
    # give a zero-width interval at 0.5; resampling seeds spreads it over [0, 1].
    values = np.vstack([np.zeros(100), np.ones(100)])
    estimate = bootstrap_mean(values, resamples=2000)
    assert estimate.mean == 0.5
    assert estimate.low == 0.0 and estimate.high == 1.0
    assert (estimate.seeds, estimate.examples) == (2, 100)


def test_not_applicable_cells_are_left_out() -> None:
    values = np.array([[1.0, np.nan, 0.0, 1.0], [np.nan, np.nan, 1.0, 1.0]])
    assert bootstrap_mean(values).mean == pytest.approx(4 / 5)
    assert np.all(np.isin(bootstrap_means(np.full((1, 3), 2.0), resamples=50), [2.0]))


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    values = binary(200, 0.5, 2)
    assert bootstrap_mean(values, seed=7) == bootstrap_mean(values, seed=7)
    assert not np.array_equal(
        bootstrap_means(values, resamples=100, seed=7),
        bootstrap_means(values, resamples=100, seed=8),
    )


def test_resample_means_equal_explicit_resampling() -> None:
    # The weighted form must equal drawing rows and columns with replacement.
    values = np.arange(12, dtype=float).reshape(3, 4) ** 1.5
    rng = np.random.default_rng(0)
    seed_weights = rng.multinomial(3, np.full(3, 1 / 3), size=1)[0]
    example_weights = rng.multinomial(4, np.full(4, 1 / 4), size=1)[0]
    rows = np.repeat(np.arange(3), seed_weights)
    columns = np.repeat(np.arange(4), example_weights)
    explicit = values[np.ix_(rows, columns)].mean()
    assert bootstrap_means(values, resamples=1, seed=0)[0] == pytest.approx(explicit)


def test_paired_difference_of_identical_arms() -> None:
    values = binary(100, 0.5, 3)
    result = paired_difference(values, values, resamples=500)
    assert result.difference == 0.0 and result.low == 0.0 and result.high == 0.0
    assert result.p_value == 1.0


def test_paired_difference_finds_a_consistent_gain() -> None:
    baseline = binary(300, 0.3, 4)
    better = baseline.copy()
    better[np.flatnonzero(baseline == 0)[:45]] = 1.0  # 45 more right, none lost: +15 points
    result = paired_difference(better, baseline, resamples=2000)
    assert result.difference == pytest.approx(0.15)
    assert result.low > 0.1 and result.high < 0.2
    assert result.p_value == pytest.approx(2 / 2001)  # no random sign flip reaches +15 points
    reverse = paired_difference(baseline, better, resamples=2000)
    assert reverse.difference == pytest.approx(-0.15) and reverse.p_value == result.p_value


def test_pairing_removes_example_difficulty() -> None:
    # Both arms share hard and easy examples; b is a +0.05 shift of a on every example. Unpaired
    # intervals would overlap widely; the paired interval is exactly the shift.
    a = np.random.default_rng(5).random((2, 200))
    result = paired_difference(a + 0.05, a, resamples=500)
    assert result.low == pytest.approx(0.05) and result.high == pytest.approx(0.05)


def test_paired_difference_p_value_of_noise_is_large() -> None:
    a, b = binary(200, 0.5, 6), binary(200, 0.5, 7)
    result = paired_difference(a, b, resamples=2000)
    assert result.low < 0 < result.high
    assert result.p_value > 0.05


def test_sign_flip_test_is_exact_for_few_examples() -> None:
    # Brute force: every one of the 2^n sign patterns of the per-example differences (means over
    # the two seeds), counting those whose |mean| reaches the observed |mean|.
    differences = np.array([[0.5, -1.0, 2.0, 1.0, np.nan], [1.5, 0.0, 1.0, np.nan, np.nan]])
    per_example = np.array([1.0, -0.5, 1.5, 1.0])  # the all-NaN example is left out
    observed = abs(per_example.mean())
    flips = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    at_least = np.abs((flips * per_example).mean(axis=1)) >= observed - 1e-12
    assert sign_flip_p_value(differences, resamples=1000) == pytest.approx(at_least.mean())
    # |sum| >= 3 only with 1, 1.5, 1 all of one sign (-0.5 either way): 4 of 16 patterns.
    assert at_least.mean() == pytest.approx(4 / 16)
    assert sign_flip_p_value(np.zeros((2, 5))) == 1.0
    assert math.isnan(sign_flip_p_value(np.full((1, 3), np.nan)))


def test_sign_flip_test_pairs_examples_not_seed_cells() -> None:
    # Seed 0 gains on every example and seed 1 loses as much: the per-example differences are 0.
    gain = np.ones((1, 50))
    assert sign_flip_p_value(np.vstack([gain, -gain])) == 1.0
    assert paired_difference(np.ones((2, 50)), np.zeros((2, 50))).p_value < 0.001


def test_holm_against_hand_computed_values() -> None:
    # Sorted: 0.01 x 4, 0.02 x 3, 0.03 x 2 (0.06), 0.5 x 1; monotone; None stays out.
    assert holm([0.03, 0.5, None, 0.01, 0.02]) == pytest.approx([0.06, 0.5, None, 0.04, 0.06])
    assert holm([0.4, 0.6]) == [0.8, 0.8]
    assert holm([]) == []


def test_paired_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="same"):
        paired_difference(np.zeros((2, 5)), np.zeros((1, 5)))


def test_mcnemar_against_a_hand_computed_table() -> None:
    # 9 pairs favour a, 1 favours b: P(X <= 1 | n = 10, p = 1/2) = 11/1024, two-sided 22/1024.
    a = np.array([1] * 9 + [0] + [1] * 5 + [0] * 5)
    b = np.array([0] * 9 + [1] + [1] * 5 + [0] * 5)
    result = mcnemar_exact(a, b)
    assert (result.a_only, result.b_only) == (9, 1)
    assert result.p_value == pytest.approx(22 / 1024)
    assert result.p_value == pytest.approx(binomtest(9, 10, 0.5).pvalue)


def test_mcnemar_pools_seeds_and_handles_no_discordance() -> None:
    a = np.array([[1, 0, 1], [0, 0, 1]])
    b = np.array([[0, 0, 1], [1, 1, 1]])
    result = mcnemar_exact(a, b)
    assert (result.a_only, result.b_only) == (1, 2)
    assert result.p_value == pytest.approx(binomtest(1, 3, 0.5).pvalue)
    assert mcnemar_exact(a, a).p_value == 1.0
    with pytest.raises(ValueError, match="binary"):
        mcnemar_exact([0.5, 1.0], [1.0, 1.0])


def test_relative_gain() -> None:
    assert relative_gain(0.03, 0.02) == pytest.approx(0.5)
    assert relative_gain(0.5, 0.0) is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean([1.0, 0.0], confidence=1.5)
