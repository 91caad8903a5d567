"""``report.md`` for a runs folder made by ``seglm compare``: tables with honest statistics, and
figures.

For each (task, model) of the grid, every *arm* (the base model, CE, each loss at each λ, each
named arm) gets its exact match, IoU and, for log-likelihood scoring, acc and acc_norm: the mean
over seeds and examples with a 95% bootstrap interval. Each arm is compared, paired on the same
seeds and examples, with every *baseline* the grid holds: CE over all supervised tokens (the
method's CE), CE over the answer tokens only, and the weighting control ``λ·CE(all) + (1 − λ)·
CE(answer)`` (the loss arms' weights with CE in the loss's place): difference, interval, the
sign-flip permutation test's p-value, Holm-corrected across the arms compared with that
baseline, and McNemar's exact p-value for exact match. Then the paper's headline statistic (relative
exact-match gain of the best loss over CE) next to the absolute difference, and figures: exact
match and IoU per arm, the λ sweep (when several λ ran), error types, training curves per loss
component, and the ROSCOE × exact match × IoU correlations (when ROSCOE scores exist).
``seglm.stats`` explains the statistics; docs/experiments.md shows how to read them.
"""

from __future__ import annotations

import json
from pathlib import Path

from seglm.experiments import GridError, read_grid_file, summarize
from seglm.experiments.grid import ROOT_WAIT_S
from seglm.folders import FolderError, check_claim, check_replaceable, hold, record_files
from seglm.report.figures import (
    correlations,
    plot_correlations,
    plot_error_types,
    plot_lambda_sweep,
    plot_main_metrics,
    plot_training_curves,
)
from seglm.report.load import BASELINES, Group, load_groups
from seglm.report.render import (
    GroupReport,
    Report,
    comparison_table,
    estimate_table,
    headline_text,
    render_markdown,
    report_json,
)
from seglm.report.statistics import arm_stats, headline
from seglm.runs import FIGURES_DIR, REPORT_JSON, REPORT_MARKDOWN, write_atomically
from seglm.stats import DEFAULT_RESAMPLES

__all__ = [
    "BASELINES",
    "GroupReport",
    "Report",
    "build_report",
    "comparison_table",
    "estimate_table",
    "headline_text",
]


def build_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Report:
    """Read a runs folder, compute the statistics, draw the figures and write report.md and
    report.json (into ``out_dir``, by default the runs folder). A damaged cell is left out and
    listed with why (its summary row's status ``damaged``). Files of those names that seglm did
    not write are refused."""
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    read_grid_file(root)  # a folder that holds no grid is named as such first
    try:
        check_claim(out, "report")  # a folder that is not seglm's: refused before any work
    except FolderError as error:
        raise GridError(f"report folder: {error}") from None
    groups = load_groups(root)
    rows = summarize(root)
    names = [REPORT_MARKDOWN, REPORT_JSON, *(f for group in groups for f in _figure_files(group))]
    try:
        with hold(out, "report", wait=ROOT_WAIT_S):
            owned = check_claim(out, "report")
            for name in names:
                check_replaceable(out, name, owned)
            record_files(out, *names)
            reports = [_group_report(group, out, resamples, seed) for group in groups]
            report = Report(out / REPORT_MARKDOWN, reports, rows)
            grid = read_grid_file(root)
            write_atomically(report.path, render_markdown(report, grid, out, resamples))
            write_atomically(out / REPORT_JSON, json.dumps(report_json(report), indent=2) + "\n")
    except FolderError as error:
        raise GridError(f"report folder: {error}") from None
    return report


FIGURES = ("main", "lambda", "errors", "training", "correlations")


def _figure_files(group: Group) -> list[str]:
    return [f"{FIGURES_DIR}/{group.slug}-{name}.png" for name in FIGURES]


def _group_report(group: Group, out: Path, resamples: int, seed: int) -> GroupReport:
    stats = arm_stats(group, resamples, seed)
    folder = out / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    figures: dict[str, Path] = {}
    plots = {
        "main": lambda p: plot_main_metrics(group, stats, p),
        "lambda": lambda p: plot_lambda_sweep(group, stats, p),
        "errors": lambda p: plot_error_types(group, p, resamples, seed),
        "training": lambda p: plot_training_curves(group, p),
    }
    for name, plot in plots.items():
        path = folder / f"{group.slug}-{name}.png"
        if plot(path):
            figures[name] = path
    found = correlations(group)
    if found is not None:
        path = folder / f"{group.slug}-correlations.png"
        plot_correlations(found, f"ROSCOE × EM × IoU, {group.task} / {group.model}", path)
        figures["correlations"] = path
    return GroupReport(group, stats, headline(stats, group.roles), found, figures)
