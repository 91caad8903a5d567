"""seglm.stats: bootstrap intervals over seeds and examples, paired tests, McNemar."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats import t as student

from seglm.stats import (
    MONTE_CARLO_ERROR,
    SIGN_FLIP_RESAMPLES,
    VarianceComponents,
    bootstrap_mean,
    bootstrap_means,
    exact_sign_flip,
    holm,
    mcnemar_exact,
    minimum_detectable_effect,
    paired_difference,
    paired_p_value,
    relative_gain,
    sign_flip_p_value,
    variance_components,
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
    assert result.p_value == pytest.approx(2 * 0.5**45)  # only all 45 flipped alike reach it
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


def test_exact_sign_flip_equals_brute_force_over_every_flip() -> None:
    rng = np.random.default_rng(8)
    for _ in range(100):
        totals = rng.integers(-4, 5, rng.integers(1, 12))
        flips = np.array(list(itertools.product([-1, 1], repeat=totals.size)))
        brute = np.mean(np.abs(flips @ totals) >= abs(totals.sum()))
        assert exact_sign_flip(totals) == pytest.approx(brute, abs=1e-12)
    assert exact_sign_flip([0, 0]) == 1.0


def test_sign_flip_p_value_is_exact_for_exact_match() -> None:
    # 11 discordant examples of one seed, 6 against 5: every flip pattern gives |sum| >= 1.
    differences = np.zeros(150)
    differences[:6], differences[6:11] = 1.0, -1.0
    assert sign_flip_p_value(differences) == 1.0
    # One seed: the exact sign-flip p is McNemar's exact p. The old demo's focal arm against CE
    # (10 against 12 discordant of 150) had p = 0.820 by Monte Carlo; exactly it is 0.832.
    a, b = np.zeros(150), np.zeros(150)
    a[:10], b[10:22] = 1.0, 1.0
    assert sign_flip_p_value(a - b) == pytest.approx(binomtest(10, 22, 0.5).pvalue, abs=1e-12)
    assert round(sign_flip_p_value(a - b), 3) == 0.832
    # Three seeds: each example's seed-summed difference is an integer in -3..3.
    rng = np.random.default_rng(9)
    three = rng.integers(0, 2, (3, 10)) - rng.integers(0, 2, (3, 10))
    sums = three.sum(axis=0)
    flips = np.array(list(itertools.product([-1, 1], repeat=10)))
    brute = np.mean(np.abs(flips @ sums) >= abs(sums.sum()))
    assert sign_flip_p_value(three.astype(float)) == pytest.approx(brute, abs=1e-12)
    # Same with a seed missing on one example (counts 3 and 2: scaled by 6).
    three = three.astype(float)
    three[0, 4] = np.nan
    means = np.nanmean(three, axis=0)
    brute = np.mean(np.abs(flips @ means) >= abs(means.sum()) - 1e-12)
    assert sign_flip_p_value(three) == pytest.approx(brute, abs=1e-12)


def test_sign_flip_p_value_of_continuous_scores_is_within_its_monte_carlo_error() -> None:
    # 16 examples: 2^16 flips exceed the 10000 resamples, so the p-value is estimated.
    per_example = np.random.default_rng(10).normal(0.15, 1.0, 16)
    flips = np.array(list(itertools.product([-1, 1], repeat=16)))
    brute = np.mean(np.abs(flips @ per_example) >= abs(per_example.sum()) - 1e-12)
    assert SIGN_FLIP_RESAMPLES == 10000 and math.sqrt(0.25 / SIGN_FLIP_RESAMPLES) <= 0.005
    estimate = sign_flip_p_value(per_example)
    assert estimate != brute and estimate == pytest.approx(brute, abs=4 * MONTE_CARLO_ERROR)


def test_variance_components_against_hand_computed_values() -> None:
    # d[s, j] = seed shift + example shift + interaction: seed shifts +-0.1 (2 seeds), example
    # shifts 0, 0.3, -0.3, and an interaction of +-0.05 that cancels within each row and column.
    seed_shift = np.array([0.1, -0.1])[:, None]
    example_shift = np.array([0.0, 0.3, -0.3])[None, :]
    interaction = 0.05 * np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])
    components = variance_components(seed_shift + example_shift + interaction)
    # MS_res = 4 x 0.05^2 / ((2-1)(3-1)) = 0.005; MS_seed = 3 x 0.02 = 0.06 -> (0.06-0.005)/3;
    # MS_ex = 2 x 0.18 / 2 = 0.18 -> (0.18 - 0.005) / 2.
    assert components.residual == pytest.approx(0.005)
    assert components.seed == pytest.approx(0.055 / 3)
    assert components.example == pytest.approx(0.0875)
    assert components.standard_error == pytest.approx(
        math.sqrt(0.055 / 3 / 2 + 0.0875 / 3 + 0.005 / 6)
    )
    # One seed: SE is the usual sd / sqrt(n); a negative estimate is clipped at 0.
    one = variance_components([1.0, 0.0, 0.0, 1.0])
    assert (one.seed, one.residual) == (0.0, 0.0)
    assert one.standard_error == pytest.approx(np.std([1, 0, 0, 1], ddof=1) / 2)
    assert variance_components([[1.0, 0.0], [1.0, 0.0]]).seed == 0.0
    # An example with a NaN in any seed is left out.
    with_nan = variance_components([[0.2, 1.0, np.nan], [0.0, 1.0, 5.0]])
    assert with_nan.examples == 2 and with_nan.residual == pytest.approx(0.01)


def test_minimum_detectable_effect_formula() -> None:
    # Holm family of 2: z(1 - 0.0125) + z(0.8) = 2.2414 + 0.8416.
    assert minimum_detectable_effect(0.01, family_size=2) == pytest.approx(0.03083, abs=1e-5)
    assert minimum_detectable_effect(0.01) == pytest.approx(0.028016, abs=1e-5)
    with pytest.raises(ValueError, match="family_size"):
        minimum_detectable_effect(0.01, family_size=0)


def _paired_exact_match(
    rng: np.random.Generator, effect: float, seeds: int, examples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two arms' 0/1 scores: on a share ACTIVE of the examples the arms disagree with chance
    DISCORDANCE per seed, the favoured arm's share of disagreements varying by example (the
    example effect) around what makes the mean difference ``effect``; elsewhere they agree."""
    active = rng.random(examples) < ACTIVE
    lean = effect / (ACTIVE * DISCORDANCE) + SPREAD * rng.choice([-1.0, 1.0], examples)
    up, down = DISCORDANCE * (1 + lean) / 2, DISCORDANCE * (1 - lean) / 2
    draw = rng.random((seeds, examples))
    difference = np.where(draw < up, 1.0, np.where(draw < up + down, -1.0, 0.0)) * active
    both_right = (rng.random((seeds, examples)) < 0.38).astype(float)
    a = np.where(difference == 0, both_right, (difference == 1).astype(float))
    return a, a - difference


ACTIVE, DISCORDANCE, SPREAD = 0.2, 0.45, 0.25


def _population_components(effect: float, seeds: int, examples: int) -> VarianceComponents:
    """The variances of :func:`_paired_exact_match`'s differences: an example's mean difference
    m is DISCORDANCE x lean on active examples, 0 elsewhere, and its variance over seeds
    DISCORDANCE - m^2; no seed effect."""
    mean_square = effect**2 / ACTIVE + ACTIVE * (DISCORDANCE * SPREAD) ** 2
    return VarianceComponents(
        0.0, mean_square - effect**2, ACTIVE * DISCORDANCE - mean_square, seeds, examples
    )


def test_an_effect_of_the_minimum_detectable_size_is_found_in_80_percent_of_grids() -> None:
    """Simulated grids like the archived arith one (3 seeds x 150 problems; Lovász against the
    control there: example variance 0.0157, residual 0.0709), with no seed effect, a Holm
    family of 2 (level 0.025).

    The sign-flip test over examples at the MDE of the generating process (its variances known,
    normal quantiles) rejects in about 80% of 400 grids (within +-0.08, four binomial standard
    deviations), and at half of it far less often. The report's test (:func:`paired_p_value`)
    also has to estimate the seed variance, from 2 degrees of freedom, so it needs a larger
    difference: the MDE the report computes from each grid's own data (t quantiles with that
    grid's degrees of freedom) is larger on average, and at that average the report's test
    rejects in about 80% of grids again."""
    seeds, examples, family = 3, 150, 2
    effect = 0.05
    for _ in range(10):  # the process's variances depend on the effect: solve effect = MDE
        components = _population_components(effect, seeds, examples)
        effect = minimum_detectable_effect(components.standard_error, family)
    assert components.example == pytest.approx(0.0157, abs=0.004)
    assert components.residual == pytest.approx(0.0709, abs=0.006)
    rng = np.random.default_rng(11)
    level = 0.05 / family
    estimated: dict[float, list[VarianceComponents]] = {}
    for scale, low, high in ((1.0, 0.72, 0.88), (0.5, 0.0, 0.45)):
        rejected = 0
        for _ in range(400):
            a, b = _paired_exact_match(rng, scale * effect, seeds, examples)
            rejected += sign_flip_p_value(a - b) < level
            estimated.setdefault(scale, []).append(variance_components(a - b))
        assert low <= rejected / 400 <= high, (scale, rejected / 400)
    # Estimated from one grid's data, the example and residual variances are unbiased (but for
    # clipping at 0, rare at this effect). The seed variance, 0 here, is estimated from 2 degrees
    # of freedom and clipped at 0, so on average it is positive and the estimated standard error
    # about 10% too large.
    found = estimated[1.0]
    assert np.mean([c.example for c in found]) == pytest.approx(components.example, rel=0.1)
    assert np.mean([c.residual for c in found]) == pytest.approx(components.residual, rel=0.05)
    ratio = np.mean([c.standard_error for c in found]) / components.standard_error
    assert 1.0 < ratio < 1.2
    reported = np.mean(
        [
            minimum_detectable_effect(
                c.standard_error, family, degrees_of_freedom=c.degrees_of_freedom
            )
            for c in found
        ]
    )
    assert 1.2 * effect < reported < 1.8 * effect
    rejected = 0
    for _ in range(400):
        a, b = _paired_exact_match(rng, reported, seeds, examples)
        rejected += paired_p_value(a - b) < level
    assert 0.72 <= rejected / 400 <= 0.92


def test_a_shift_that_a_seed_gives_every_example_is_noise_to_the_report_test() -> None:
    """No true difference, but each seed of the arm moves every example by a draw of N(0,
    0.05^2) (a lucky or unlucky training run): the sign-flip test over examples takes that shift
    for an effect and rejects at 0.05 in about a third of 1000 grids; the report's test, which
    counts the seed variance, in about 8% (Satterthwaite's approximation with 2 degrees of
    freedom is a little liberal, the sign-flip test seven times so)."""
    rng = np.random.default_rng(3)
    seeds, examples = 3, 150
    report_rejects = sign_flip_rejects = 0
    for _ in range(1000):
        a, b = _paired_exact_match(rng, 0.0, seeds, examples)
        differences = a - b + rng.normal(0.0, 0.05, (seeds, 1))
        report_rejects += paired_p_value(differences) < 0.05
        sign_flip_rejects += sign_flip_p_value(differences, resamples=500) < 0.05
    assert report_rejects / 1000 < 0.11
    assert sign_flip_rejects / 1000 > 0.25


def test_the_report_test_with_one_seed_is_the_sign_flip_test_and_otherwise_a_t_test() -> None:
    rng = np.random.default_rng(8)
    one = rng.normal(0.05, 0.3, (1, 40))
    assert paired_p_value(one) == sign_flip_p_value(one)
    several = rng.normal(0.05, 0.3, (3, 40))
    components = variance_components(several)
    statistic = several.mean() / components.standard_error
    expected = 2 * student.sf(abs(statistic), components.degrees_of_freedom)
    assert paired_p_value(several) == pytest.approx(expected)
    result = paired_difference(several, np.zeros((3, 40)))
    assert result.p_value == pytest.approx(expected)
    # The interval is the test's: mean +- t(0.975) x SE on the same degrees of freedom.
    half = student.ppf(0.975, components.degrees_of_freedom) * components.standard_error
    assert (result.low, result.high) == pytest.approx(
        (several.mean() - half, several.mean() + half)
    )
    assert paired_p_value(np.zeros((3, 5))) == 1.0
    assert paired_p_value(np.full((3, 5), 0.2)) < 1e-12


def test_satterthwaite_degrees_of_freedom_against_hand_computed_values() -> None:
    # Mean squares by hand: MS_seed, MS_example and MS_residual of a 3 x 4 table.
    table = np.array([[0.3, 0.1, 0.8, 0.0], [0.5, 0.2, 0.9, 0.4], [0.1, 0.0, 0.3, 0.2]])
    seeds, examples = table.shape
    grand = table.mean()
    ms_seed = examples * ((table.mean(axis=1) - grand) ** 2).sum() / (seeds - 1)
    ms_example = seeds * ((table.mean(axis=0) - grand) ** 2).sum() / (examples - 1)
    residual = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0) + grand
    ms_residual = (residual**2).sum() / ((seeds - 1) * (examples - 1))
    assert ms_seed > ms_residual and ms_example > ms_residual  # no component clipped
    cells = seeds * examples
    variance = (ms_seed + ms_example - ms_residual) / cells
    freedom = variance**2 / (
        (ms_seed / cells) ** 2 / (seeds - 1)
        + (ms_example / cells) ** 2 / (examples - 1)
        + (ms_residual / cells) ** 2 / ((seeds - 1) * (examples - 1))
    )
    components = variance_components(table)
    assert components.standard_error**2 == pytest.approx(variance)
    assert components.degrees_of_freedom == pytest.approx(freedom)
    assert variance_components(table[:1]).degrees_of_freedom == examples - 1


def test_the_minimum_detectable_effect_with_few_degrees_of_freedom_uses_t_quantiles() -> None:
    # t(0.975, 2) = 4.303 and t(0.8, 2) = 1.061.
    assert minimum_detectable_effect(0.01, degrees_of_freedom=2) == pytest.approx(0.05364, abs=1e-4)
