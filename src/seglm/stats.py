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
difference's interval is not inflated by how hard the examples are. Its p-value is two-sided:
twice the share of bootstrap differences on the far side of zero. McNemar's exact test compares
two binary metrics (exact match) on the same (seed, example) pairs: only the discordant pairs
count, and under the null hypothesis each is equally likely to favour either arm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
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
    """Mean of ``a - b`` over paired cells, its bootstrap interval and two-sided p-value."""

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


def paired_bootstrap(
    a: object,
    b: object,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """Mean of ``a - b`` (row s of ``a`` paired with row s of ``b``, column j with column j), its
    percentile interval and two-sided p-value, resampling the same seeds and examples for both.

    p = min(1, 2 (1 + #{d* on the far side of 0}) / (resamples + 1)), where d* are the bootstrap
    differences and the far side is the side opposite the observed difference (0 included): the
    smallest two-sided level at which the percentile interval would exclude zero."""
    _check_resampling(resamples, confidence)
    first, second = as_matrix(a, "a"), as_matrix(b, "b")
    if first.shape != second.shape:
        raise ValueError(
            f"paired arrays must have the same [seeds, examples] shape, got {first.shape} and "
            f"{second.shape}"
        )
    differences = first - second  # NaN where either arm has no value
    samples = bootstrap_means(differences, resamples, seed)
    low, high = _interval(samples, confidence)
    observed = _mean(differences)
    finite = samples[np.isfinite(samples)]
    if finite.size == 0 or not np.isfinite(observed):
        p_value = float("nan")
    else:
        below, above = int(np.sum(finite <= 0)), int(np.sum(finite >= 0))
        far = below if observed > 0 else above if observed < 0 else min(below, above)
        p_value = min(1.0, 2 * (1 + far) / (finite.size + 1))
    return PairedDifference(observed, low, high, p_value, first.shape[0], first.shape[1])


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
