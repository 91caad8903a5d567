"""The report as text: tables, the headline, report.md and report.json."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from seglm.experiments import BASE
from seglm.metrics.exact_match import CHOICE_FORMAT, reference_answer
from seglm.report.answers import COLLAPSE_THRESHOLD, NO_ANSWER, ConstantAnswer
from seglm.report.load import BASELINES, CONTROL, LABELS, Group
from seglm.report.statistics import ArmStats, Comparison, Headline, group_metrics
from seglm.stats import (
    DEFAULT_POWER,
    MONTE_CARLO_ERROR,
    PAIRED_TEST,
    SIGN_FLIP_RESAMPLES,
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
    answer_format: str
    constant: ConstantAnswer | None  # multiple choice: the best constant answer

    @property
    def collapsed(self) -> list[str]:
        return [s.arm for s in self.stats if s.collapsed]


@dataclass
class Report:
    path: Path
    groups: list[GroupReport]
    rows: list[dict[str, Any]]  # the grid summary, one row per cell
    size_figures: dict[tuple[str, str], Path]  # (task, model) -> metrics against training size

    @property
    def figures(self) -> list[Path]:
        found = [path for group in self.groups for path in group.figures.values()]
        return found + list(self.size_figures.values())


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
COLLAPSED = "[collapsed]"
BOTH_COLLAPSED = "[both collapsed]"
COLLAPSED_PERCENT = f"{100 * COLLAPSE_THRESHOLD:g}"


def _mde_text(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


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
        row = [arm_label(group, s), str(s.seeds)]
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
    minimum detectable effect, the permutation test's p and its Holm correction; McNemar's p for
    exact match. A row whose arm and baseline are both collapsed says so."""
    compared = [s for s in stats if role in s.versus]
    if not compared:
        return None
    by_name = {s.arm: s for s in stats}
    metrics = group_metrics(group)
    header = ["arm"]
    for metric in metrics:
        header += [f"Δ{SHORT[metric]} (points) [95% CI]", "MDE", "p", "p Holm"]
        if metric == "exact_match":
            header.append("p McNemar")
    rows = []
    for s in compared:
        comparison = s.versus[role]
        baseline = by_name[comparison.baseline]
        label = arm_label(group, s)
        if s.collapsed and baseline.collapsed:
            label = label.replace(COLLAPSED, BOTH_COLLAPSED)
        row = [label]
        for metric in metrics:
            difference = comparison.differences.get(metric)
            row += [
                _difference_text(difference),
                _mde_text(comparison.mde.get(metric)) if difference else "—",
                _p_text(difference.p_value if difference else None),
                _p_text(comparison.holm.get(metric)),
            ]
            if metric == "exact_match":
                mcnemar = comparison.mcnemar
                row.append(_p_text(mcnemar.p_value if mcnemar else None))
        rows.append(row)
    return header, rows


def baseline_caption(group: Group, stats: list[ArmStats], role: str) -> str:
    """``against control (`control`, collapsed)``: the baseline role, its arm(s) and collapse."""
    names = list(dict.fromkeys(s.versus[role].baseline for s in stats if role in s.versus))
    collapsed = {s.arm for s in stats if s.collapsed}
    shown = [f"`{name}`{', collapsed' if name in collapsed else ''}" for name in names]
    return f"against {role} ({'; '.join(shown)})"


def answers_table(report: GroupReport) -> tuple[list[str], list[list[str]]]:
    """One row per arm: what it answers. Multiple choice: the share of each letter over its
    seeds, then the most common letter of each seed; other tasks: each seed's most common final
    answer and how many distinct answers it gave. Then whether the arm is collapsed."""
    group, stats = report.group, report.stats
    choice = report.answer_format == CHOICE_FORMAT
    if choice:
        letters = sorted(
            {reference_answer(CHOICE_FORMAT, r) for r in group.references}
            | {a for s in stats for a in s.answers.shares if a != NO_ANSWER}
        )
        header = ["arm", *(f"{letter} %" for letter in letters), "no letter %"]
        header += ["most common per seed (%)", "collapsed"]
    else:
        header = ["arm", "most common answer per seed (%)", "distinct answers per seed"]
        header += ["no answer %", "collapsed"]
    rows = []
    for s in stats:
        shares = s.answers.shares
        top = ", ".join(
            f"{answer}: {_percent(share)}" if answer is not None else "—"
            for answer, share in (cell.most_common for cell in s.answers.cells)
        )
        row = [arm_label(group, s, marked=False)]
        if choice:
            row += [_percent(shares.get(letter, 0.0)) for letter in letters]
            row += [_percent(shares.get(NO_ANSWER, 0.0)), top]
        else:
            distinct = ", ".join(str(cell.distinct) for cell in s.answers.cells)
            row += [top, distinct, _percent(shares.get(NO_ANSWER, 0.0))]
        row.append("**yes**" if s.collapsed else "no")
        rows.append(row)
    if choice:
        references = [reference_answer(CHOICE_FORMAT, r) for r in group.references]
        shares = {letter: references.count(letter) / len(references) for letter in letters}
        rows.append(_reference_row("references (evaluated)", letters, shares, len(header)))
        constant = report.constant
        if constant is not None and constant.train_shares is not None:
            label = f"references (`{constant.split}` split)"
            rows.append(_reference_row(label, letters, constant.train_shares, len(header)))
    return header, rows


def _reference_row(
    label: str, letters: Sequence[str], shares: dict[str, float], width: int
) -> list[str]:
    row = [label, *(_percent(shares.get(letter, 0.0)) for letter in letters)]
    return row + ["—"] * (width - len(row))


def constant_text(constant: ConstantAnswer, examples: int) -> str:
    """The best constant answer in one sentence, or why it is missing."""
    if constant.estimate is None:
        return (
            f"Best constant answer: not computed, the training split `{constant.split}` could "
            f"not be read ({constant.problem}); give `--data-dir` or set SEGLM_DATA_DIR."
        )
    assert constant.train_shares is not None and constant.answer is not None
    share, estimate = constant.train_shares[constant.answer], constant.estimate
    return (
        f"Best constant answer: `{constant.answer}`, the most common answer of the training "
        f"split `{constant.split}` ({_percent(share)}% of {constant.train_examples}). Answering "
        f"`{constant.answer}` to all {examples} evaluated examples scores exact match "
        f"{_percent(estimate.mean)}% [{_percent(estimate.low)}, {_percent(estimate.high)}]: an "
        "arm at this level may have learned only the answer distribution."
    )


def arm_label(group: Group, stats: ArmStats, marked: bool = True) -> str:
    """The arm's name, the baseline it is, and :data:`COLLAPSED` when it is collapsed."""
    role = group.roles.get(stats.arm)
    label = f"{stats.arm} ({role})" if role and role != stats.arm else stats.arm
    return f"{label} {COLLAPSED}" if marked and stats.collapsed else label


def verdict_text(group: Group, stats: list[ArmStats], arm: str, metric: str) -> str | None:
    """How an arm compares with the weighting control on a metric, in one sentence with the
    difference, its interval and the minimum detectable effect; None without that comparison."""
    by_name = {s.arm: s for s in stats}
    comparison: Comparison | None = by_name[arm].versus.get(CONTROL)
    difference = comparison.differences.get(metric) if comparison else None
    if comparison is None or difference is None:
        return None
    mde = comparison.mde.get(metric)
    p_holm = comparison.holm.get(metric)
    shown = (
        f"{arm} against the control (`{comparison.baseline}`), {LABELS[metric]}: "
        f"{_difference_text(difference)} points, MDE {_mde_text(mde)}"
    )
    if p_holm is not None and p_holm < 0.05:
        side = "above" if difference.difference > 0 else "below"
        text = f"{shown}: {side} the control (p Holm {_p_text(p_holm)})."
    else:
        text = (
            f"{shown}: no detectable difference (p Holm {_p_text(p_holm)}); a true difference of "
            f"{_mde_text(mde)} points or more would have been detected with "
            f"{DEFAULT_POWER:.0%} power."
        )
    if by_name[arm].collapsed and by_name[comparison.baseline].collapsed:
        text += " Both arms are collapsed: the difference compares near-constant answers."
    return text


ESTIMATES, ANSWERS = "estimates", "answers"


@dataclass(frozen=True)
class Table:
    kind: str  # ESTIMATES, ANSWERS or the baseline role the arms are compared with
    caption: str
    header: list[str]
    rows: list[list[str]]


def group_tables(report: GroupReport) -> list[Table]:
    """The tables of one group, as report.md and the console show them."""
    group, stats = report.group, report.stats
    title = f"{group.title}: {len(group.ids)} examples per cell"
    tables = [
        Table(ESTIMATES, title, *estimate_table(group, stats)),
        Table(ANSWERS, "answers", *answers_table(report)),
    ]
    for role in BASELINES:
        found = comparison_table(group, stats, role)
        if found is not None:
            tables.append(Table(role, baseline_caption(group, stats, role), *found))
    return tables


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
            f"paired p = {_p_text(absolute.p_value)}; Bonferroni-corrected for "
            f"picking the best of {result.compared}: p = {_p_text(result.p_bonferroni)}; "
            f"minimum detectable effect at that level: {_mde_text(result.mde)} points."
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
    "intervals, dots the mean of each seed; hatched bars are collapsed arms; for multiple "
    "choice, the dotted line is the exact match of the best constant answer.",
    "lambda": "λ sweep: each loss at every λ that ran; λ = 1 is CE alone (dashed).",
    "errors": "Reasoning-step error rates per arm (lower is better), mean and 95% interval.",
    "training": "Training curves: the objective and each loss term (unweighted), mean over seeds "
    "at each logged step. The CE term is comparable across arms.",
    "correlations": "Pearson correlations between ROSCOE scores, exact match and IoU over every "
    "prediction of the finished cells (n/a: undefined, e.g. a constant column).",
    "sizes": "Exact match and formula IoU against the number of training examples, one line per "
    "arm: means over seeds and examples with 95% bootstrap intervals; the untrained model is "
    "the dashed line; a cross marks a collapsed arm at that size.",
}


def render_markdown(report: Report, grid: dict[str, Any], out: Path, resamples: int) -> str:
    status = defaultdict(list)
    for row in report.rows:
        status[row["status"]].append(row)
    settings = grid.get("eval", {})
    sizes = grid.get("train_sizes") or []
    lines = [
        "# seglm report",
        "",
        f"Grid: tasks {', '.join(grid['tasks'])}; models {', '.join(grid['models'])}; losses "
        f"{', '.join(grid['losses']) or 'none'}; λ {', '.join(f'{x:g}' for x in grid['lambdas'])}"
        f"{_named_arms_text(grid.get('arms') or {})}; seeds "
        f"{', '.join(map(str, grid['seeds']))}"
        f"{'; training sizes ' + ', '.join(map(str, sizes)) if sizes else ''}. Evaluation: "
        f"split `{settings.get('split')}`, {settings.get('limit') or 'all'} examples, scoring "
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
    lines += ["", *_how_to_read(resamples)]
    for key, members in groupby(report.groups, key=lambda g: (g.group.task, g.group.model)):
        for group_report in members:
            lines += _group_markdown(group_report, out)
        if key in report.size_figures:
            lines += [
                "",
                f"## {key[0]} / {key[1]}: against the training size",
                "",
                _figure_link(report.size_figures[key], out, "sizes"),
                "",
                FIGURE_CAPTIONS["sizes"],
            ]
    lines += _overall_headline(report.groups)
    lines += ["", "## Cells", "", _cells_table(report.rows)]
    return "\n".join(lines) + "\n"


def _group_markdown(report: GroupReport, out: Path) -> list[str]:
    group = report.group
    lines = ["", f"## {group.title}", "", f"{len(group.ids)} examples per cell."]
    for table in group_tables(report):
        if table.kind == ESTIMATES:
            lines += ["", _markdown_table(table.header, table.rows)]
        elif table.kind == ANSWERS:
            lines += ["", "### Answers", "", _markdown_table(table.header, table.rows)]
            lines += ["", *_answers_notes(report)]
        else:
            heading = f"### A{table.caption[1:]}"  # "against CE(all) ..." as a heading
            lines += ["", heading, "", _markdown_table(table.header, table.rows)]
            if table.kind == CONTROL:
                lines += ["", *_verdicts(report)]
    lines += ["", "### Headline statistic", "", headline_text(report.headline)]
    for name, path in report.figures.items():
        lines += ["", _figure_link(path, out, name), "", FIGURE_CAPTIONS[name]]
    return lines


def _how_to_read(resamples: int) -> list[str]:
    return [
        "Means are over seeds and examples; 95% intervals come from a bootstrap that resamples "
        f"seeds and examples ({resamples} resamples). Each arm is compared with every baseline "
        "the grid holds (CE(all): CE over every supervised token, the method's CE; CE(answer): "
        "CE over the answer tokens only; control: λ·CE(all) + (1 − λ)·CE(answer), the loss "
        "arms' weights with CE in the loss's place), paired on the same seeds and examples. "
        f"p: two-sided {PAIRED_TEST} (each example's difference keeps or flips its sign; exact "
        f"for exact match, otherwise from {SIGN_FLIP_RESAMPLES} random flips, Monte Carlo "
        f"standard error of p at most {MONTE_CARLO_ERROR}): a gain that one seed gives every "
        "example counts as noise, not as evidence; p Holm: Holm's correction across "
        "the trained arms compared with that baseline, per metric; p McNemar: McNemar's exact "
        "test on exact match, every (seed, example) pair counted, uncorrected. MDE: the minimum "
        f"detectable effect, in points: the smallest true difference found with "
        f"{DEFAULT_POWER:.0%} power at the level of Holm's first step (0.05 / the number of "
        "arms compared with that baseline; conservative for the others), from the observed "
        "seed, example and residual variance of the paired differences and the same degrees of "
        "freedom as the test. A difference whose "
        "p Holm is above 0.05 reads: a true difference as large as the MDE would have been "
        "found 80% of the time, and none was; a smaller one may be there (the interval says "
        "how small). docs/experiments.md explains how to read them.",
        "",
        f"Collapse: an arm is {COLLAPSED} when its most common final answer is more than "
        f"{COLLAPSED_PERCENT}% of a seed's predictions (mean over its seeds); "
        f"{BOTH_COLLAPSED} marks a comparison of two collapsed arms, which compares "
        "near-constant answers, not what the arms learned.",
    ]


def _answers_notes(report: GroupReport) -> list[str]:
    collapsed = report.collapsed
    lines = [
        f"Collapsed arms: {', '.join(f'`{name}`' for name in collapsed)}."
        if collapsed
        else "No arm is collapsed."
    ]
    if report.constant is not None:
        lines += ["", constant_text(report.constant, len(report.group.ids))]
    return lines


def _verdicts(report: GroupReport) -> list[str]:
    """Each loss arm against its control, on the first metric, in words."""
    metric = group_metrics(report.group)[0]
    found = [
        verdict_text(report.group, report.stats, s.arm, metric)
        for s in report.stats
        if s.arm not in report.group.roles and s.arm != BASE
    ]
    return [f"- {text}" for text in found if text is not None]


def _figure_link(path: Path, out: Path, name: str) -> str:
    relative = path.relative_to(out) if path.is_relative_to(out) else path
    return f"![{name}]({relative.as_posix()})"


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
                "train_size": g.group.train_size,
                "examples": len(g.group.ids),
                "arms": plain(g.stats),
                "collapsed": g.collapsed,
                "collapse_threshold": COLLAPSE_THRESHOLD,
                "constant_answer": plain(g.constant),
                "headline": plain(g.headline),
                "correlations": g.correlations,
                "figures": [str(p) for p in g.figures.values()],
            }
            for g in report.groups
        ],
        "size_figures": [
            {"task": task, "model": model, "figure": str(path)}
            for (task, model), path in report.size_figures.items()
        ],
        "cells": plain(report.rows),
    }
