"""Confidence intervals and paired tests for comparing fine-tuning runs (numpy and scipy only).

Results of a grid are per-example scores: an array ``[seeds, examples]`` per arm (one loss at one
λ), where every seed evaluated the same examples, and NaN marks an example where the metric does
not apply (e.g. IoU when the reference has no formulas). Two sources of noise matter: which
examples were drawn into the evaluation set, and which seed trained the model. The bootstrap here
resamples both: seeds with replacement and, independently, examples with replacement, and takes
the mean over the resampled (seed, example) cells. With one seed it is the ordinary bootstrap over
examples.

A paired comparison of two arms pairs seed s of one arm with seed s of the other (same data
order, same evaluation set) and example j with example j, so the difference's interval is not
inflated by how hard the examples are. With several seeds that interval is the t-interval of
the test below (mean +- t x SE); with one, the bootstrap over examples.

Its p-value (:func:`paired_p_value`, :data:`PAIRED_TEST`) must count both sources of noise too.
:func:`variance_components` splits the paired differences into a seed, an example and a residual
variance (two-way analysis of variance), which give the mean difference's standard error over
seeds and examples and, by Satterthwaite's approximation, its degrees of freedom; with several
seeds the p-value is the two-sided t-test of the mean difference against that standard error.
With three seeds the seed variance rests on two degrees of freedom, so where it dominates the
test needs a large difference, as it should: a gain that one seed gives every example is not
evidence that the loss helps. With one seed there is no seed variance to measure, and the test
is the paired sign-flip permutation test over examples (:func:`sign_flip_p_value`): each
example's difference is as likely positive as negative under the null, exact for exact match by
convolution, otherwise from :data:`SIGN_FLIP_RESAMPLES` random flips (Monte Carlo standard error
at most :data:`MONTE_CARLO_ERROR`). :func:`holm` corrects a family of p-values for multiple
comparisons (Holm's step-down method). McNemar's exact test compares two binary metrics (exact
match) on the same (seed, example) pairs: only the discordant pairs count, and under the null
hypothesis each is equally likely to favour either arm.

How large a difference a comparison could have seen: :func:`minimum_detectable_effect` turns the
standard error and its degrees of freedom into the smallest true difference the test detects
with 80% power at the level a comparison is tested at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import convolve
from scipy.stats import binom, binomtest, permutation_test
from scipy.stats import t as student

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.8
PAIRED_TEST = (
    "t-test of the paired mean difference against its standard error over seeds and examples "
    "(Satterthwaite's degrees of freedom); with one seed, the paired sign-flip permutation test "
    "over examples"
)
# The largest Monte Carlo standard error of a sign-flip p-value, sqrt(p (1 - p) / R), reached at
# p = 0.5: R = 0.25 / 0.005^2 = 10000 random flips keep it at most 0.005.
MONTE_CARLO_ERROR = 0.005
SIGN_FLIP_RESAMPLES = math.ceil(0.25 / MONTE_CARLO_ERROR**2)
# Integer sums are rounded from floats: a sum within this of an integer is that integer.
_INTEGER_TOLERANCE = 1e-9
# The exact test convolves once per distinct |difference|: at most this many (exact match over up
# to 32 seeds) keeps it under a second for 10,000 examples; more go to Monte Carlo.
EXACT_MAX_MAGNITUDES = 32
# Bootstrap rows per chunk: bounds memory at chunk x examples floats whatever the resample count.
_CHUNK = 256


@dataclass(frozen=True)
class Estimate:
    """A mean over (seed, example) cells with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    seeds: int
    examples: int


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over paired cells, its interval (:func:`paired_difference`), the
    two-sided p-value of
    :func:`paired_p_value`, and the standard error of the mean over seeds and examples with its
    degrees of freedom (:class:`VarianceComponents`)."""

    difference: float
    low: float
    high: float
    p_value: float
    seeds: int
    examples: int
    standard_error: float
    degrees_of_freedom: float


@dataclass(frozen=True)
class VarianceComponents:
    """Paired differences ``[seeds, examples]`` as seed + example + residual: the variance of
    the seeds' shifts (``seed``), of the examples' shifts (``example``) and of what is left
    (``residual``, the seed-by-example interaction and the noise of a single evaluation)."""

    seed: float
    example: float
    residual: float
    seeds: int
    examples: int
    # Of the standard error's estimate (Satterthwaite); infinite: known exactly.
    degrees_of_freedom: float = math.inf

    @property
    def standard_error(self) -> float:
        """The standard error of the mean difference over ``seeds`` seeds and ``examples``
        examples, each drawn at random: sqrt(seed/S + example/n + residual/(S n))."""
        seeds, examples = self.seeds, self.examples
        return math.sqrt(
            self.seed / seeds + self.example / examples + self.residual / (seeds * examples)
        )


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs (``a_only``: a right and b wrong) and the exact two-sided p-value."""

    a_only: int
    b_only: int
    p_value: float


def as_matrix(values: object, name: str = "values") -> np.ndarray:
    """Scores as a float ``[seeds, examples]`` array; a 1-D input is one seed."""
    matrix = np.asarray(values, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(
            f"{name} must be a non-empty [seeds, examples] array, got shape {matrix.shape}"
        )
    return matrix


def _check_resampling(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_means(
    values: object, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """``resamples`` means of ``values`` ``[seeds, examples]``, each over seeds and examples
    drawn with replacement (NaN cells are left out of a mean; a mean with none is NaN)."""
    matrix = as_matrix(values)
    seeds, examples = matrix.shape
    finite = np.isfinite(matrix)
    filled = np.where(finite, matrix, 0.0)
    present = finite.astype(float)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        # Multinomial counts are resampling with replacement: a drawn row's weight is how many
        # times it was drawn, so the mean is sum(w_seed * x * w_example) / sum(w_seed * w_example).
        seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=size)
        example_weights = rng.multinomial(examples, np.full(examples, 1 / examples), size=size)
        totals = np.einsum("bs,sn,bn->b", seed_weights, filled, example_weights)
        counts = np.einsum("bs,sn,bn->b", seed_weights, present, example_weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start : start + size] = totals / counts
    return means


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _mean(matrix: np.ndarray) -> float:
    finite = matrix[np.isfinite(matrix)]
    return float(finite.mean()) if finite.size else float("nan")


def bootstrap_mean(
    values: object,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """The mean of ``values`` ``[seeds, examples]`` and its percentile bootstrap interval
    (seeds and examples resampled). Deterministic for a given ``seed``."""
    _check_resampling(resamples, confidence)
    matrix = as_matrix(values)
    low, high = _interval(bootstrap_means(matrix, resamples, seed), confidence)
    return Estimate(_mean(matrix), low, high, matrix.shape[0], matrix.shape[1])


def sign_flip_p_value(
    differences: object, resamples: int = SIGN_FLIP_RESAMPLES, seed: int = 0
) -> float:
    """Two-sided p-value of the paired sign-flip permutation test on ``differences``
    ``[seeds, examples]`` (``a - b``; NaN where either arm has no value): each example's mean
    difference over its seeds keeps or flips its sign at random. Exact (:func:`exact_sign_flip`)
    when those means are integers after scaling by a common number of seeds (exact match) of
    few distinct sizes; otherwise from ``resamples`` random flips (all 2^n flips when that is
    at most ``resamples``). Every difference zero gives 1; no finite difference gives NaN."""
    matrix = as_matrix(differences, "differences")
    counts = np.isfinite(matrix).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_example = np.nansum(matrix, axis=0) / counts
    present = counts > 0
    per_example = per_example[present]
    if per_example.size == 0:
        return float("nan")
    if not np.any(per_example):
        return 1.0
    totals = _integer_totals(per_example, counts[present])
    if totals is not None:
        return exact_sign_flip(totals)
    result = permutation_test(
        (per_example,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(min(1.0, result.pvalue))


def _integer_totals(per_example: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
    """The per-example means times the least common multiple of the seed counts, when these
    are all integers (they are for 0/1 scores) with at most :data:`EXACT_MAX_MAGNITUDES` distinct
    sizes: flipping their signs is flipping the means'."""
    scaled = per_example * np.lcm.reduce(counts.astype(np.int64))
    rounded = np.rint(scaled)
    if not np.allclose(scaled, rounded, rtol=0.0, atol=_INTEGER_TOLERANCE):
        return None
    if np.unique(np.abs(rounded[rounded != 0])).size > EXACT_MAX_MAGNITUDES:
        return None
    return rounded.astype(np.int64)


def exact_sign_flip(totals: object) -> float:
    """P(|T| >= |t|) for T = sum of ±x_j, each sign + or - with probability 1/2 independently,
    and t = sum of x_j: the exact two-sided sign-flip p-value of integers ``totals``. Zeros drop
    out; the distribution of T is the convolution over the distinct |x| (k copies of x move T by
    x (2B - k), B binomial(k, 1/2))."""
    values = np.abs(np.asarray(totals, dtype=np.int64).ravel())
    observed = abs(int(np.sum(totals)))
    values = values[values != 0]
    if values.size == 0:
        return 1.0
    step = int(np.gcd.reduce(values))  # T lives on a lattice of this step: work on its points
    values, observed = values // step, observed // step
    distribution = np.ones(1)  # P(T = t) for t = -support .. support, support growing
    for value, count in zip(*np.unique(values, return_counts=True), strict=True):
        kernel = np.zeros(2 * value * count + 1)
        kernel[:: 2 * value] = binom.pmf(np.arange(count + 1), count, 0.5)
        # Long inputs are convolved by FFT, whose rounding can leave tiny negative values.
        distribution = np.clip(convolve(distribution, kernel), 0.0, None)
    support = (distribution.size - 1) // 2
    outcomes = np.abs(np.arange(-support, support + 1))
    return float(min(1.0, distribution[outcomes >= observed].sum()))


def paired_difference(
    a: object,
    b: object,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """Mean of ``a - b`` (row s of ``a`` paired with row s of ``b``, column j with column j), its
    interval, the p-value of :func:`paired_p_value` and the standard error of the mean
    difference with its degrees of freedom (:func:`variance_components`).

    The interval agrees with the test: with several seeds it is mean +- t x SE on the test's
    degrees of freedom (a percentile bootstrap that resamples three seeds is too narrow: three
    values drawn with replacement spread two thirds as much as the seeds do); with one seed it is
    the percentile interval of ``resamples`` bootstrap draws of the examples."""
    _check_resampling(resamples, confidence)
    first, second = as_matrix(a, "a"), as_matrix(b, "b")
    if first.shape != second.shape:
        raise ValueError(
            f"paired arrays must have the same [seeds, examples] shape, got {first.shape} and "
            f"{second.shape}"
        )
    differences = first - second  # NaN where either arm has no value
    components = variance_components(differences)
    mean = _mean(differences)
    if first.shape[0] > 1:
        quantile = student.ppf(1 - (1 - confidence) / 2, components.degrees_of_freedom)
        half_width = float(quantile * components.standard_error)
        low, high = mean - half_width, mean + half_width
    else:
        low, high = _interval(bootstrap_means(differences, resamples, seed), confidence)
    return PairedDifference(
        mean,
        low,
        high,
        paired_p_value(differences, components, seed=seed),
        first.shape[0],
        first.shape[1],
        components.standard_error,
        components.degrees_of_freedom,
    )


def paired_p_value(
    differences: object, components: VarianceComponents | None = None, seed: int = 0
) -> float:
    """Two-sided p-value of the mean of paired ``differences`` ``[seeds, examples]`` being 0
    (:data:`PAIRED_TEST`). With several seeds: t = mean / SE with Satterthwaite's degrees of
    freedom, SE and both from :func:`variance_components` (``components`` if already computed),
    so that a shift that one seed gives every example counts as noise, not as signal; a mean
    of 0 gives 1, a nonzero mean with no variance 0. With one seed: :func:`sign_flip_p_value`."""
    matrix = as_matrix(differences, "differences")
    if matrix.shape[0] == 1:
        return sign_flip_p_value(matrix, seed=seed)
    components = components or variance_components(matrix)
    mean = _mean(matrix[:, np.isfinite(matrix).all(axis=0)])
    error = components.standard_error
    if not (np.isfinite(mean) and np.isfinite(error)):
        return float("nan")
    if mean == 0:
        return 1.0
    if error == 0:
        return 0.0
    return float(min(1.0, 2 * student.sf(abs(mean) / error, components.degrees_of_freedom)))


def variance_components(differences: object) -> VarianceComponents:
    """The seed, example and residual variances of paired differences ``[seeds, examples]``,
    estimated by the two-way analysis of variance without replication (method of moments):
    with mean squares MS_seed, MS_example and MS_residual, E[MS_residual] = residual,
    E[MS_example] = residual + S example and E[MS_seed] = residual + n seed; negative
    estimates are set to 0. Examples with a NaN in any seed are left out. With one seed there is
    no seed variance to estimate: ``seed`` is 0, ``residual`` is 0 and ``example`` is the
    variance of the differences, so the standard error is the usual sqrt(var / n) with n - 1
    degrees of freedom. Fewer than two examples give NaN.

    The squared standard error is a sum of mean squares, (MS_seed + MS_example -
    MS_residual) / (S n), less the terms of a component set to 0; its degrees of freedom are
    Satterthwaite's: (sum of terms)^2 / sum(term^2 / the term's degrees of freedom)."""
    matrix = as_matrix(differences, "differences")
    matrix = matrix[:, np.isfinite(matrix).all(axis=0)]
    seeds, examples = matrix.shape
    if examples < 2:
        return VarianceComponents(math.nan, math.nan, math.nan, seeds, examples)
    if seeds == 1:
        return VarianceComponents(
            0.0, float(np.var(matrix, ddof=1)), 0.0, 1, examples, float(examples - 1)
        )
    seed_means, example_means = matrix.mean(axis=1), matrix.mean(axis=0)
    grand = matrix.mean()
    seed_square = examples * np.sum((seed_means - grand) ** 2) / (seeds - 1)
    example_square = seeds * np.sum((example_means - grand) ** 2) / (examples - 1)
    residuals = matrix - seed_means[:, None] - example_means[None, :] + grand
    residual = float(np.sum(residuals**2) / ((seeds - 1) * (examples - 1)))
    seed_variance = max(0.0, float(seed_square - residual) / examples)
    example_variance = max(0.0, float(example_square - residual) / seeds)
    cells = seeds * examples
    terms = [  # (term of SE^2, its degrees of freedom)
        (seed_square / cells if seed_variance > 0 else 0.0, seeds - 1),
        (example_square / cells if example_variance > 0 else 0.0, examples - 1),
        (
            residual * (1 - (seed_variance > 0) - (example_variance > 0)) / cells,
            (seeds - 1) * (examples - 1),
        ),
    ]
    spread = sum(term**2 / freedom for term, freedom in terms)
    freedom = sum(term for term, _ in terms) ** 2 / spread if spread > 0 else math.inf
    return VarianceComponents(
        seed_variance, example_variance, residual, seeds, examples, float(freedom)
    )


def minimum_detectable_effect(
    standard_error: float,
    family_size: int = 1,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    degrees_of_freedom: float = math.inf,
) -> float:
    """The smallest true difference that a two-sided t-test at level ``alpha / family_size``
    detects with probability ``power``, for a mean difference with this standard error of
    ``degrees_of_freedom``: (t(1 - alpha / (2 m)) + t(power)) x SE, m = ``family_size``
    (the normal quantiles where the degrees of freedom are infinite).

    For a comparison in a Holm family of m, alpha / m is the level of Holm's first (strictest)
    step, so the effect is conservative for every comparison but the family's smallest p.
    ``standard_error`` should carry the seed variance (:class:`VarianceComponents`), as
    :func:`paired_p_value` does."""
    if family_size < 1:
        raise ValueError(f"family_size must be >= 1, got {family_size}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    level = alpha / family_size
    quantiles = student.ppf([1 - level / 2, power], degrees_of_freedom)
    return float(quantiles.sum() * standard_error)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down correction of a family of p-values (None or NaN: not in the family):
    the k-th smallest of m is multiplied by m - k + 1, and the results made non-decreasing."""
    family = sorted((p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p))
    corrected: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(family):
        running = max(running, min(1.0, (len(family) - rank) * p))
        corrected[index] = running
    return corrected


def mcnemar_exact(a: object, b: object) -> McNemar:
    """McNemar's exact test on paired binary outcomes (any shape; pairs are matched by
    position): a binomial test of the discordant counts against p = 1/2. No discordant pair
    gives p = 1."""
    first, second = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if first.shape != second.shape:
        raise ValueError(
            f"paired outcomes must have the same size, got {first.size}, {second.size}"
        )
    for name, values in (("a", first), ("b", second)):
        if not np.all(np.isin(values, (0.0, 1.0))):
            raise ValueError(f"McNemar needs binary outcomes (0/1); {name} has other values")
    a_only = int(np.sum((first == 1) & (second == 0)))
    b_only = int(np.sum((first == 0) & (second == 1)))
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(binomtest(a_only, discordant, 0.5).pvalue)
    return McNemar(a_only, b_only, p_value)


def relative_gain(value: float, baseline: float) -> float | None:
    """(value - baseline) / baseline: the paper's headline form; None for a zero baseline."""
    if baseline == 0 or not np.isfinite(baseline) or not np.isfinite(value):
        return None
    return (value - baseline) / baseline
