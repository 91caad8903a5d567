"""Confidence intervals and paired tests for comparing fine-tuning runs (numpy and scipy only).

Results of a grid are per-example scores: an array ``[seeds, examples]`` per arm (one loss at one
λ), where every seed evaluated the same examples, and NaN marks an example where the metric does
not apply (e.g. IoU when the reference has no formulas). Two sources of noise matter: which
examples were drawn into the evaluation set, and which seed trained the model. The bootstrap here
resamples both: seeds with replacement and, independently, examples with replacement, and takes
the mean over the resampled (seed, example) cells. With one seed it is the ordinary bootstrap over
examples.

A paired comparison of two arms uses the *same* resampled seeds and examples for both (seed s of
one arm is paired with seed s of the other: same data order, same evaluation set), so the
difference's interval is not inflated by how hard the examples are. Its p-value comes from a
two-sided paired sign-flip permutation test (:data:`PAIRED_TEST`): under the null hypothesis the
two arms are exchangeable on each example, so each example's difference (its mean over the seeds)
is as likely positive as negative; the p-value is the share of random sign flips whose mean
difference is at least as far from zero as the observed one. Examples are the independent units
(every seed evaluated the same ones), so the seeds' correlation on an example is kept; the
interval, not the test, carries the seed-to-seed noise. :func:`holm` corrects a family of p-values
for multiple comparisons (Holm's step-down method). McNemar's exact test compares
two binary metrics (exact match) on the same (seed, example) pairs: only the discordant pairs
count, and under the null hypothesis each is equally likely to favour either arm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, permutation_test

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
PAIRED_TEST = "paired sign-flip permutation test over examples"
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
    """Mean of ``a - b`` over paired cells, its bootstrap interval and the two-sided p-value of
    the sign-flip permutation test (:data:`PAIRED_TEST`)."""

    difference: float
    low: float
    high: float
    p_value: float
    seeds: int
    examples: int


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
    differences: object, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> float:
    """Two-sided p-value of the paired sign-flip permutation test on ``differences``
    ``[seeds, examples]`` (``a - b``; NaN where either arm has no value): each example's mean
    difference over its seeds keeps or flips its sign at random (all 2^n flips when that is at
    most ``resamples``). Every difference zero gives 1; no finite difference gives NaN."""
    matrix = as_matrix(differences, "differences")
    counts = np.isfinite(matrix).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_example = np.nansum(matrix, axis=0) / counts
    per_example = per_example[counts > 0]
    if per_example.size == 0:
        return float("nan")
    if not np.any(per_example):
        return 1.0
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


def paired_difference(
    a: object,
    b: object,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """Mean of ``a - b`` (row s of ``a`` paired with row s of ``b``, column j with column j), its
    percentile interval, resampling the same seeds and examples for both, and the p-value of the
    paired sign-flip permutation test (:func:`sign_flip_p_value`)."""
    _check_resampling(resamples, confidence)
    first, second = as_matrix(a, "a"), as_matrix(b, "b")
    if first.shape != second.shape:
        raise ValueError(
            f"paired arrays must have the same [seeds, examples] shape, got {first.shape} and "
            f"{second.shape}"
        )
    differences = first - second  # NaN where either arm has no value
    low, high = _interval(bootstrap_means(differences, resamples, seed), confidence)
    p_value = sign_flip_p_value(differences, resamples, seed)
    return PairedDifference(_mean(differences), low, high, p_value, first.shape[0], first.shape[1])


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
