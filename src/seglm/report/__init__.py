"""``report.md`` for a runs folder made by ``seglm compare``: tables with honest statistics, and
figures.

For each (task, model, training size) of the grid, every *arm* (the base model, CE, each loss at
each λ, each named arm) gets its exact match, IoU and, for log-likelihood scoring, acc and
acc_norm: the mean over seeds and examples with a 95% bootstrap interval. What each arm answers
comes next: the distribution of its final answers, whether it collapsed onto one answer, and for
multiple choice the score of the best constant answer, chosen on the training split
(:mod:`seglm.report.answers`). Each arm is compared, paired on the same seeds and examples, with
every *baseline* the grid holds: CE over all supervised tokens (the method's CE), CE over the
answer tokens only, and the weighting control ``λ·CE(all) + (1 − λ)·CE(answer)`` (the loss arms'
weights with CE in the loss's place): difference, interval, the smallest difference the
comparison could detect, the sign-flip permutation test's p-value, Holm-corrected across the
arms compared with that baseline, and McNemar's exact p-value for exact match. Then the paper's
headline statistic (relative exact-match gain of the best loss over CE) next to the absolute
difference, and figures: exact match and IoU per arm, the λ sweep (when several λ ran), error
types, training curves per loss component, the ROSCOE × exact match × IoU correlations (when
ROSCOE scores exist), and exact match and IoU against the training size (when several ran).
``seglm.stats`` explains the statistics; docs/experiments.md shows how to read them.
"""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

from seglm.experiments import GridError, read_grid_file, summarize
from seglm.experiments.grid import ROOT_WAIT_S
from seglm.folders import FolderError, check_claim, check_replaceable, hold, record_files
from seglm.report.answers import answer_format, constant_answer
from seglm.report.figures import (
    correlations,
    plot_correlations,
    plot_error_types,
    plot_lambda_sweep,
    plot_main_metrics,
    plot_training_curves,
    plot_training_sizes,
)
from seglm.report.load import BASELINES, Group, figure_slug, load_groups
from seglm.report.render import (
    GroupReport,
    Report,
    Table,
    comparison_table,
    estimate_table,
    group_tables,
    headline_text,
    render_markdown,
    report_json,
    verdict_text,
)
from seglm.report.statistics import arm_stats, headline
from seglm.runs import FIGURES_DIR, REPORT_JSON, REPORT_MARKDOWN, write_atomically
from seglm.stats import DEFAULT_RESAMPLES

__all__ = [
    "BASELINES",
    "GroupReport",
    "Report",
    "Table",
    "build_report",
    "comparison_table",
    "estimate_table",
    "group_tables",
    "headline_text",
    "verdict_text",
]


def build_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> Report:
    """Read a runs folder, compute the statistics, draw the figures and write report.md and
    report.json (into ``out_dir``, by default the runs folder). ``data_dir`` holds the task's
    training split for the best constant answer of a multiple-choice task (default: the grid's
    ``data_dir``, then ``$SEGLM_DATA_DIR``, then the hub). A damaged cell is left out and listed
    with why (its summary row's status ``damaged``). Files of those names that seglm did not
    write are refused."""
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    grid = read_grid_file(root)  # a folder that holds no grid is named as such first
    try:
        check_claim(out, "report")  # a folder that is not seglm's: refused before any work
    except FolderError as error:
        raise GridError(f"report folder: {error}") from None
    groups = load_groups(root)
    rows = summarize(root)
    size_figures = {
        (g.task, g.model): f"{FIGURES_DIR}/{figure_slug(g.task, g.model)}-sizes.png" for g in groups
    }
    names = [
        REPORT_MARKDOWN,
        REPORT_JSON,
        *(f for group in groups for f in _figure_files(group)),
        *size_figures.values(),
    ]
    train = grid.get("train", {})
    data = str(data_dir) if data_dir is not None else train.get("data_dir")
    split = str(train.get("train_split") or "train")
    try:
        with hold(out, "report", wait=ROOT_WAIT_S):
            owned = check_claim(out, "report")
            for name in names:
                check_replaceable(out, name, owned)
            record_files(out, *names)
            (out / FIGURES_DIR).mkdir(exist_ok=True)
            reports = [_group_report(g, out, resamples, seed, split, data) for g in groups]
            sizes = {}
            for key, members in groupby(reports, key=lambda r: (r.group.task, r.group.model)):
                if plot_training_sizes(list(members), out / size_figures[key]):
                    sizes[key] = out / size_figures[key]
            report = Report(out / REPORT_MARKDOWN, reports, rows, sizes)
            write_atomically(report.path, render_markdown(report, grid, out, resamples))
            write_atomically(out / REPORT_JSON, json.dumps(report_json(report), indent=2) + "\n")
    except FolderError as error:
        raise GridError(f"report folder: {error}") from None
    return report


FIGURES = ("main", "lambda", "errors", "training", "correlations")


def _figure_files(group: Group) -> list[str]:
    return [f"{FIGURES_DIR}/{group.slug}-{name}.png" for name in FIGURES]


def _group_report(
    group: Group, out: Path, resamples: int, seed: int, split: str, data_dir: str | None
) -> GroupReport:
    answers = answer_format(group)
    stats = arm_stats(group, answers, resamples, seed)
    constant = constant_answer(group, split, data_dir, resamples, seed)
    folder = out / FIGURES_DIR
    figures: dict[str, Path] = {}
    plots = {
        "main": lambda p: plot_main_metrics(group, stats, p, constant),
        "lambda": lambda p: plot_lambda_sweep(group, stats, p),
        "errors": lambda p: plot_error_types(group, stats, p, resamples, seed),
        "training": lambda p: plot_training_curves(group, stats, p),
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
    return GroupReport(
        group, stats, headline(stats, group.roles), found, figures, answers, constant
    )
