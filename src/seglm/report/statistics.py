"""Each arm's estimates, its answers, and its paired comparisons with every baseline, each with
the smallest difference it could detect (seglm.stats)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from seglm.experiments import (
    BASE,
)
from seglm.report.answers import AnswerDistribution, answer_distribution
from seglm.report.load import BASELINES, CE_ALL, CONTROL, MAIN_METRICS, Arm, Group
from seglm.stats import (
    Estimate,
    McNemar,
    PairedDifference,
    bootstrap_mean,
    holm,
    mcnemar_exact,
    minimum_detectable_effect,
    paired_difference,
    relative_gain,
)


@dataclass
class Comparison:
    """An arm against one baseline arm, paired on the same seeds and examples."""

    baseline: str  # the baseline arm's name
    differences: dict[str, PairedDifference]  # per main metric
    holm: dict[str, float | None]  # per metric: p corrected across the arms of this baseline
    mcnemar: McNemar | None  # exact match
    # Per metric: the smallest true difference detected with 80% power at 0.05 / (Holm family).
    mde: dict[str, float] = field(default_factory=dict)


@dataclass
class ArmStats:
    arm: str
    seeds: int
    examples: int
    estimates: dict[str, Estimate]  # per main metric
    versus: dict[str, Comparison]  # per baseline role (CE(all), ...) other than the arm itself
    answers: AnswerDistribution

    @property
    def collapsed(self) -> bool:
        return self.answers.collapsed

    @property
    def versus_ce(self) -> dict[str, PairedDifference]:
        """The differences from CE over all tokens (the method's CE), per metric."""
        comparison = self.versus.get(CE_ALL)
        return comparison.differences if comparison else {}


def _paired_rows(arm: Arm, ce: Arm, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The arm's and the baseline's scores on the same (seed, example) cells: seed s with seed
    s; the base model (one evaluation) is paired with every seed of the baseline."""
    if metric not in arm.values or metric not in ce.values:
        return None
    if arm.loss == BASE:
        return np.repeat(arm.values[metric], len(ce.seeds), axis=0), ce.values[metric]
    common = [seed for seed in arm.seeds if seed in ce.seeds]
    if not common:
        return None
    rows = [arm.seeds.index(seed) for seed in common]
    ce_rows = [ce.seeds.index(seed) for seed in common]
    return arm.values[metric][rows], ce.values[metric][ce_rows]


def group_metrics(group: Group) -> list[str]:
    """The main metrics some arm of the group has a value of."""
    return [
        metric
        for metric in MAIN_METRICS
        if any(
            metric in arm.values and np.isfinite(arm.values[metric]).any()
            for arm in group.arms.values()
        )
    ]


def baseline_for(group: Group, arm: Arm, role: str) -> Arm | None:
    """The arm ``arm`` is compared with as ``role``; the control is the one at the arm's λ."""
    candidates = [group.arms[name] for name, found in group.roles.items() if found == role]
    if role == CONTROL:
        candidates = [
            c for c in candidates if arm.lam is not None and math.isclose(c.lam or 0, arm.lam)
        ]
    candidates = [c for c in candidates if c is not arm and group.roles.get(arm.name) != role]
    return candidates[0] if candidates else None


def _compare(
    arm: Arm, baseline: Arm, metrics: Sequence[str], resamples: int, seed: int
) -> Comparison:
    pairs = {metric: _paired_rows(arm, baseline, metric) for metric in metrics}
    differences = {
        metric: paired_difference(*pair, resamples=resamples, seed=seed)
        for metric, pair in pairs.items()
        if pair is not None and np.isfinite(pair[0] - pair[1]).any()
    }
    pair = pairs.get("exact_match")
    mcnemar = None
    if pair is not None and np.isfinite(pair[0]).all() and np.isfinite(pair[1]).all():
        mcnemar = mcnemar_exact(*pair)
    return Comparison(baseline.name, differences, {}, mcnemar)


def arm_stats(group: Group, answer_format: str, resamples: int, seed: int) -> list[ArmStats]:
    metrics = group_metrics(group)
    results = []
    for arm in group.arms.values():
        estimates = {
            metric: bootstrap_mean(arm.values[metric], resamples, seed=seed)
            for metric in metrics
            if metric in arm.values and np.isfinite(arm.values[metric]).any()
        }
        versus = {}
        for role in BASELINES:
            baseline = baseline_for(group, arm, role)
            if baseline is not None:
                versus[role] = _compare(arm, baseline, metrics, resamples, seed)
        answers = answer_distribution(arm, answer_format)
        results.append(
            ArmStats(arm.name, len(arm.seeds), len(group.ids), estimates, versus, answers)
        )
    _correct_for_multiple_comparisons(results, metrics)
    return results


def _correct_for_multiple_comparisons(results: list[ArmStats], metrics: Sequence[str]) -> None:
    """Holm across the trained arms compared with one baseline, per baseline and metric (the
    base model's comparison is shown, not tested), and each comparison's minimum detectable
    effect at the level of Holm's first step in its family (the base model's: at 0.05)."""
    for role in BASELINES:
        family = [s for s in results if role in s.versus and s.arm != BASE]
        for metric in metrics:
            found = [s.versus[role].differences.get(metric) for s in family]
            corrected = holm([d.p_value if d else None for d in found])
            size = sum(p is not None for p in corrected)
            for member, p_value in zip(family, corrected, strict=True):
                member.versus[role].holm[metric] = p_value
            for member in results:
                comparison = member.versus.get(role)
                difference = comparison.differences.get(metric) if comparison else None
                if comparison is None or difference is None:
                    continue
                tested = member.arm != BASE and np.isfinite(difference.p_value)
                comparison.mde[metric] = minimum_detectable_effect(
                    difference.standard_error,
                    size if tested else 1,
                    degrees_of_freedom=difference.degrees_of_freedom,
                )


@dataclass
class Headline:
    """The paper's statistic for one (task, model): the best loss's relative EM gain over CE."""

    best: str
    compared: int  # losses the best was picked from
    ce_em: float
    best_em: float
    relative: float | None
    absolute: PairedDifference | None
    p_bonferroni: float | None
    mde: float | None  # at the Bonferroni level 0.05 / compared


def headline(stats: list[ArmStats], roles: dict[str, str]) -> Headline | None:
    ce = next((s for s in stats if roles.get(s.arm) == CE_ALL), None)
    candidates = [
        s for s in stats if s.arm not in roles and s.arm != BASE and "exact_match" in s.estimates
    ]
    if ce is None or "exact_match" not in ce.estimates or not candidates:
        return None
    best = max(candidates, key=lambda s: s.estimates["exact_match"].mean)
    absolute = best.versus_ce.get("exact_match")
    p_bonferroni = min(1.0, absolute.p_value * len(candidates)) if absolute else None
    mde = (
        minimum_detectable_effect(
            absolute.standard_error,
            len(candidates),
            degrees_of_freedom=absolute.degrees_of_freedom,
        )
        if absolute
        else None
    )
    ce_em, best_em = ce.estimates["exact_match"].mean, best.estimates["exact_match"].mean
    return Headline(
        best.arm,
        len(candidates),
        ce_em,
        best_em,
        relative_gain(best_em, ce_em),
        absolute,
        p_bonferroni,
        mde,
    )
