"""The report as text: tables, the headline, report.md and report.json."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seglm.report.load import BASELINES, Group
from seglm.report.statistics import ArmStats, Headline, group_metrics
from seglm.stats import (
    PAIRED_TEST,
    Estimate,
    PairedDifference,
)

# -- the report --------------------------------------------------------------------------------


@dataclass
class GroupReport:
    group: Group
    stats: list[ArmStats]
    headline: Headline | None
    correlations: dict[str, Any] | None
    figures: dict[str, Path]


@dataclass
class Report:
    path: Path
    groups: list[GroupReport]
    rows: list[dict[str, Any]]  # the grid summary, one row per cell

    @property
    def figures(self) -> list[Path]:
        return [path for group in self.groups for path in group.figures.values()]


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _estimate_text(estimate: Estimate | None) -> str:
    if estimate is None:
        return "n/a"
    return f"{_percent(estimate.mean)} [{_percent(estimate.low)}, {_percent(estimate.high)}]"


def _difference_text(difference: PairedDifference | None) -> str:
    if difference is None:
        return "—"
    return (
        f"{_percent(difference.difference, True)} "
        f"[{_percent(difference.low, True)}, {_percent(difference.high, True)}]"
    )


def _p_text(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


SHORT = {"exact_match": "EM", "iou": "IoU", "acc": "acc", "acc_norm": "acc_norm"}


def estimate_table(group: Group, stats: list[ArmStats]) -> tuple[list[str], list[list[str]]]:
    """One row per arm: seeds, exact match per seed, each metric's mean with its interval."""
    metrics = group_metrics(group)
    header = ["arm", "seeds"]
    if "exact_match" in metrics:
        header.append("EM per seed")
    header += [f"{SHORT[metric]} % [95% CI]" for metric in metrics]
    rows = []
    for s in stats:
        arm = group.arms[s.arm]
        row = [_arm_label(group, s.arm), str(s.seeds)]
        if "exact_match" in metrics:
            values = arm.values.get("exact_match")
            per_seed = np.nanmean(values, axis=1) if values is not None else []
            row.append(", ".join(_percent(value) for value in per_seed))
        row += [_estimate_text(s.estimates.get(metric)) for metric in metrics]
        rows.append(row)
    return header, rows


def comparison_table(
    group: Group, stats: list[ArmStats], role: str
) -> tuple[list[str], list[list[str]]] | None:
    """Every arm against one baseline: per metric the paired difference with its interval, the
    permutation test's p and its Holm correction; McNemar's p for exact match."""
    compared = [s for s in stats if role in s.versus]
    if not compared:
        return None
    metrics = group_metrics(group)
    header = ["arm"]
    for metric in metrics:
        header += [f"Δ{SHORT[metric]} (points) [95% CI]", "p", "p Holm"]
        if metric == "exact_match":
            header.append("p McNemar")
    rows = []
    for s in compared:
        comparison = s.versus[role]
        row = [_arm_label(group, s.arm)]
        for metric in metrics:
            difference = comparison.differences.get(metric)
            row += [
                _difference_text(difference),
                _p_text(difference.p_value if difference else None),
                _p_text(comparison.holm.get(metric)),
            ]
            if metric == "exact_match":
                mcnemar = comparison.mcnemar
                row.append(_p_text(mcnemar.p_value if mcnemar else None))
        rows.append(row)
    return header, rows


def _arm_label(group: Group, name: str) -> str:
    role = group.roles.get(name)
    return f"{name} ({role})" if role and role != name else name


def headline_text(result: Headline | None) -> str:
    if result is None:
        return "No headline statistic: it needs finished CE(all) cells and at least one loss arm."
    relative = (
        "undefined (CE's exact match is 0)"
        if result.relative is None
        else f"{100 * result.relative:+.0f}%"
    )
    absolute = result.absolute
    lines = [
        f"**Best loss: `{result.best}`** (highest mean exact match among {result.compared} "
        f"loss arm(s)). Exact match {_percent(result.ce_em)}% with CE → "
        f"{_percent(result.best_em)}% with `{result.best}`.",
        "",
        f"- Relative gain over CE, as the paper reports it: **{relative}**.",
    ]
    if absolute is not None:
        lines.append(
            f"- Absolute difference: **{_percent(absolute.difference, True)} points** "
            f"(95% CI [{_percent(absolute.low, True)}, {_percent(absolute.high, True)}]), "
            f"permutation-test p = {_p_text(absolute.p_value)}; Bonferroni-corrected for "
            f"picking the best of {result.compared}: p = {_p_text(result.p_bonferroni)}."
        )
    lines += [
        "",
        "Why the relative gain misleads: it divides by CE's exact match, so a small baseline "
        "makes any change look large (2% → 3% is +50% relative, yet one more right answer in a "
        "hundred), and the best of several losses is picked after seeing the test results, so "
        "it would show a gain even if no loss helped. The absolute difference with its interval "
        "and the corrected p-value say how large the change is and whether it exceeds the noise.",
    ]
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


FIGURE_CAPTIONS = {
    "main": "Exact match per arm, and formula IoU or log-likelihood accuracy (acc, acc_norm) "
    "where the task has them: bars are means over seeds and examples, whiskers 95% bootstrap "
    "intervals, dots the mean of each seed.",
    "lambda": "λ sweep: each loss at every λ that ran; λ = 1 is CE alone (dashed).",
    "errors": "Reasoning-step error rates per arm (lower is better), mean and 95% interval.",
    "training": "Training curves: the objective and each loss term (unweighted), mean over seeds "
    "at each logged step. The CE term is comparable across arms.",
    "correlations": "Pearson correlations between ROSCOE scores, exact match and IoU over every "
    "prediction of the finished cells (n/a: undefined, e.g. a constant column).",
}


def render_markdown(report: Report, grid: dict[str, Any], out: Path, resamples: int) -> str:
    status = defaultdict(list)
    for row in report.rows:
        status[row["status"]].append(row)
    settings = grid.get("eval", {})
    lines = [
        "# seglm report",
        "",
        f"Grid: tasks {', '.join(grid['tasks'])}; models {', '.join(grid['models'])}; losses "
        f"{', '.join(grid['losses']) or 'none'}; λ {', '.join(f'{x:g}' for x in grid['lambdas'])}"
        f"{_named_arms_text(grid.get('arms') or {})}; seeds "
        f"{', '.join(map(str, grid['seeds']))}. Evaluation: split `{settings.get('split')}`, "
        f"{settings.get('limit') or 'all'} examples, scoring "
        f"`{settings.get('scoring', 'generate')}` (greedy decoding).",
        "",
        f"Cells: {len(status['finished'])} finished, {len(status['failed'])} failed, "
        f"{len(status['pending'])} pending"
        + (f", {len(status['damaged'])} damaged (left out)." if status["damaged"] else "."),
    ]
    for row in status["failed"]:
        lines.append(f"- failed: `{row['dir']}`: {row.get('error', '')} (see its error.txt)")
    for row in status["damaged"]:
        lines.append(f"- damaged: `{row['dir']}`: {row['error']} (`seglm compare` repairs it)")
    lines += [
        "",
        "Means are over seeds and examples; 95% intervals come from a bootstrap that resamples "
        f"seeds and examples ({resamples} resamples). Each arm is compared with every baseline "
        "the grid holds (CE(all): CE over every supervised token, the method's CE; CE(answer): "
        "CE over the answer tokens only; control: λ·CE(all) + (1 − λ)·CE(answer), the loss "
        "arms' weights with CE in the loss's place), paired on the same seeds and examples. "
        f"p: two-sided {PAIRED_TEST} (each example's difference, averaged over seeds, keeps or "
        "flips its sign); p Holm: Holm's correction across the trained arms compared with that "
        "baseline, per metric; p McNemar: McNemar's exact test on exact match, every (seed, "
        "example) pair counted, uncorrected. docs/experiments.md explains how to read them.",
    ]
    for group_report in report.groups:
        group = group_report.group
        lines += [
            "",
            f"## {group.task} / {group.model}",
            "",
            f"{len(group.ids)} examples per cell.",
            "",
            _markdown_table(*estimate_table(group, group_report.stats)),
        ]
        for role in BASELINES:
            table = comparison_table(group, group_report.stats, role)
            if table is not None:
                lines += ["", f"### Against {role}", "", _markdown_table(*table)]
        lines += [
            "",
            "### Headline statistic",
            "",
            headline_text(group_report.headline),
        ]
        for name, path in group_report.figures.items():
            relative = path.relative_to(out) if path.is_relative_to(out) else path
            lines += ["", f"![{name}]({relative.as_posix()})", "", FIGURE_CAPTIONS[name]]
    lines += _overall_headline(report.groups)
    lines += ["", "## Cells", "", _cells_table(report.rows)]
    return "\n".join(lines) + "\n"


def _named_arms_text(arms: dict[str, str]) -> str:
    if not arms:
        return ""
    return "; named arms " + ", ".join(f"{name} (`{spec}`)" for name, spec in arms.items())


def _overall_headline(groups: Sequence[GroupReport]) -> list[str]:
    """The paper's form over several (task, model): the mean of the best losses' gains."""
    results = [g.headline for g in groups if g.headline is not None]
    if len(results) < 2:
        return []
    relative = [r.relative for r in results if r.relative is not None]
    absolute = [r.absolute.difference for r in results if r.absolute is not None]
    mean_relative = f"{100 * np.mean(relative):+.0f}%" if relative else "undefined"
    return [
        "",
        "## Across tasks and models",
        "",
        f"Mean relative exact-match gain of the best loss over CE, over {len(results)} "
        f"(task, model) pairs, as the paper reports it: **{mean_relative}**; mean absolute "
        f"difference: **{_percent(np.mean(absolute) if absolute else None, True)} points**. "
        "Each best loss "
        "was picked per pair after seeing its test scores: read the per-pair intervals above.",
    ]


def _cells_table(rows: list[dict[str, Any]]) -> str:
    header = ("cell", "status", "EM %", "IoU %", "train s", "eval s")
    body = [
        [
            f"`{row['dir']}`",
            row["status"],
            _percent(row.get("exact_match")),
            _percent(row.get("iou")),
            _seconds(row.get("train_s")),
            _seconds(row.get("eval_s")),
        ]
        for row in rows
    ]
    return _markdown_table(header, body)


def _seconds(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "—"


def report_json(report: Report) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if hasattr(value, "__dataclass_fields__"):
            return {k: plain(v) for k, v in vars(value).items()}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {
        "groups": [
            {
                "task": g.group.task,
                "model": g.group.model,
                "examples": len(g.group.ids),
                "arms": plain(g.stats),
                "headline": plain(g.headline),
                "correlations": g.correlations,
                "figures": [str(p) for p in g.figures.values()],
            }
            for g in report.groups
        ],
        "cells": plain(report.rows),
    }
