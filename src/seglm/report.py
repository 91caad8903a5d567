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
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seglm.evaluate import METRICS_FILE, PREDICTIONS_FILE, SETTINGS_FILE
from seglm.experiments import (
    BASE,
    CE,
    Cell,
    GridError,
    finished_cells,
    grid_cells,
    model_slug,
    read_grid_file,
    read_json,
    summarize,
)
from seglm.stats import (
    DEFAULT_RESAMPLES,
    PAIRED_TEST,
    Estimate,
    McNemar,
    PairedDifference,
    bootstrap_mean,
    holm,
    mcnemar_exact,
    paired_difference,
    relative_gain,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"
FIGURES_DIR = "figures"
LOG_FILE = "log.jsonl"
ROSCOE_FILE = "roscoe.jsonl"  # per-example ROSCOE scores, one line per prediction (by id)
# The metrics compared per arm, where a task has them (acc and acc_norm: log-likelihood scoring).
MAIN_METRICS = ("exact_match", "iou", "acc", "acc_norm")
# The baselines every arm is compared with, where the grid has them (see ``baseline_roles``).
CE_ALL, CE_ANSWER, CONTROL = "CE(all)", "CE(answer)", "control"
BASELINES = (CE_ALL, CE_ANSWER, CONTROL)
ERROR_TYPES = (
    "missing_steps",
    "extra_steps",
    "repetitions",
    "wrong_operators",
    "inverted_operands",
)
# Evaluation settings that must agree for cells to be compared (the model differs by design).
COMPARED_SETTINGS = (
    "task",
    "task_options",
    "split",
    "scoring",
    "num_fewshot",
    "max_new_tokens",
    "dtype",
)
LABELS = {
    "exact_match": "exact match",
    "iou": "IoU of reasoning steps",
    "acc": "acc (log-likelihood)",
    "acc_norm": "acc_norm (log-likelihood per byte)",
    "missing_steps": "missing steps",
    "extra_steps": "extra steps",
    "repetitions": "repetitions",
    "wrong_operators": "wrong operators",
    "inverted_operands": "inverted operands",
}
COMPONENT = re.compile(r"^loss_([a-z0-9_]+(?:@[a-z]+)?)$")


# -- reading the cells -------------------------------------------------------------------------


@dataclass
class Arm:
    """The finished cells of one arm (base, CE, a loss at a λ, a named arm) of one task and
    model; ``spec`` is its loss spec (None for the base model)."""

    name: str
    loss: str
    lam: float | None
    spec: str | None = None
    seeds: list[int | None] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> [seeds, examples]
    logs: list[list[dict[str, Any]]] = field(default_factory=list)  # per seed: log events
    records: list[dict[str, Any]] = field(default_factory=list)  # per-example scores, pooled


@dataclass
class Group:
    """Every finished arm of one (task, model), on the same examples."""

    task: str
    model: str
    ids: list[str]
    arms: dict[str, Arm]
    roles: dict[str, str] = field(default_factory=dict)  # arm name -> baseline it is, if any

    @property
    def slug(self) -> str:
        return f"{self.task}-{model_slug(self.model)}"


def _read_predictions(folder: Path) -> list[dict[str, Any]]:
    """The evaluated predictions (metrics.json's ``n`` first lines: seglm.evaluate keeps
    predictions of another selection after them, unscored)."""
    metrics = read_json(folder / METRICS_FILE) or {}
    lines = (folder / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return records[: metrics.get("n", len(records))]


def _roscoe_scores(record: dict[str, Any], cached: dict[str, Any]) -> dict[str, Any]:
    """A prediction's ROSCOE scores: in its metrics, under ``roscoe``, or in roscoe.jsonl."""
    from seglm.metrics.roscoe import SCORE_NAMES

    sources = (
        record.get("metrics") or {},
        record.get("roscoe") or {},
        cached.get(record["id"], {}),
    )
    return {name: s[name] for s in sources for name in SCORE_NAMES if s.get(name) is not None}


def _read_roscoe_file(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / ROSCOE_FILE
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


def _read_log(folder: Path) -> list[dict[str, Any]]:
    path = folder / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_same_evaluation(cells: Sequence[tuple[Cell, Path]]) -> None:
    """Cells compared on one table must have evaluated the same way."""
    first_cell, first_folder = cells[0]
    reference = read_json(first_folder / SETTINGS_FILE) or {}
    for cell, folder in cells[1:]:
        settings = read_json(folder / SETTINGS_FILE) or {}
        for key in COMPARED_SETTINGS:
            if settings.get(key) != reference.get(key):
                raise GridError(
                    f"cells {first_cell.relative_dir} and {cell.relative_dir} were evaluated "
                    f"differently ({key}: {reference.get(key)!r} vs {settings.get(key)!r}); "
                    "they cannot be compared"
                )


def load_groups(root: Path) -> list[Group]:
    """Every (task, model) with at least one finished cell; refuses cells that were evaluated
    on different examples or settings."""
    cells = finished_cells(root, grid_cells(read_grid_file(root)))
    if not cells:
        raise GridError(
            f"{root}: no finished cell (no {METRICS_FILE} in any cell folder); run "
            "`seglm compare` first, or see summary.csv for failed cells"
        )
    ce_scope = str(read_grid_file(root).get("train", {}).get("ce_scope", "all"))
    by_group: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        by_group[(cell.task, cell.model)].append(cell)
    return [
        _load_group(root, task, model, members, ce_scope)
        for (task, model), members in by_group.items()
    ]


def _ce_terms(spec: str, ce_scope: str) -> dict[str, float] | None:
    """A spec made of CE terms only, as weights per scope (``{"all": 0.6, "answer": 0.4}``);
    None when another loss takes part."""
    from seglm.losses import Objective, split_term

    objective = Objective.from_spec(spec, ce_scope=ce_scope)
    if any(split_term(term)[0] != CE for term in objective.weights):
        return None
    return {objective.scope(term): weight for term, weight in objective.weights.items()}


def baseline_roles(arms: Sequence[Arm], ce_scope: str) -> dict[str, str]:
    """Which arms are the baselines: CE(all), CE(answer), and the weighting control
    ``λ·CE(all) + (1 − λ)·CE(answer)`` (one per λ; each loss arm meets the one at its own λ)."""
    roles: dict[str, str] = {}
    for arm in arms:
        terms = _ce_terms(arm.spec, ce_scope) if arm.spec else None
        if terms is None:
            continue
        if set(terms) == {"all"}:
            roles.setdefault(arm.name, CE_ALL)
        elif set(terms) == {"answer"}:
            roles.setdefault(arm.name, CE_ANSWER)
        else:
            roles[arm.name] = CONTROL
    return roles


def ce_all_weight(arm: Arm, ce_scope: str) -> float | None:
    """λ of an arm: the weight of its CE over all tokens, relative to its total weight."""
    from seglm.losses import Objective, split_term

    if arm.spec is None:
        return None
    objective = Objective.from_spec(arm.spec, ce_scope=ce_scope)
    total = sum(objective.weights.values())
    all_ce = sum(
        weight
        for term, weight in objective.weights.items()
        if split_term(term)[0] == CE and objective.scope(term) == "all"
    )
    return all_ce / total


def _load_group(root: Path, task: str, model: str, cells: list[Cell], ce_scope: str) -> Group:
    folders = [(cell, root / cell.relative_dir) for cell in cells]
    _check_same_evaluation(folders)
    ids: list[str] | None = None
    arms: dict[str, Arm] = {}
    for cell, folder in folders:
        records = _read_predictions(folder)
        cell_ids = [record["id"] for record in records]
        if ids is None:
            ids, first = cell_ids, cell
        elif cell_ids != ids:
            raise GridError(
                f"cells {first.relative_dir} ({len(ids)} examples) and {cell.relative_dir} "
                f"({len(cell_ids)} examples) evaluated different examples; they cannot be paired"
            )
        spec = None if cell.is_base else cell.loss_spec
        arm = arms.setdefault(cell.arm, Arm(cell.arm, cell.loss, cell.lam, spec))
        _add_seed(arm, cell, folder, records)
    assert ids is not None
    roles = baseline_roles(list(arms.values()), ce_scope)
    for arm in arms.values():
        arm.lam = ce_all_weight(arm, ce_scope) if arm.lam is None and arm.spec else arm.lam
    ordered = sorted(arms.values(), key=lambda arm: _arm_order(arm, roles))
    return Group(task, model, ids, {arm.name: arm for arm in ordered}, roles)


def _add_seed(arm: Arm, cell: Cell, folder: Path, records: list[dict[str, Any]]) -> None:
    names = {name for record in records for name in record["metrics"]}
    row_count = len(arm.seeds)
    for name in names:
        column = np.array([_number(record["metrics"].get(name)) for record in records])
        previous = arm.values.get(name, np.full((row_count, len(records)), np.nan))
        arm.values[name] = np.vstack([previous, column[None, :]])
    for name in set(arm.values) - names:
        arm.values[name] = np.vstack([arm.values[name], np.full((1, len(records)), np.nan)])
    arm.seeds.append(cell.seed)
    arm.logs.append(_read_log(folder))
    roscoe = _read_roscoe_file(folder)
    for record in records:
        scores = {name: record["metrics"].get(name) for name in MAIN_METRICS}
        arm.records.append({**scores, **_roscoe_scores(record, roscoe)})


def _number(value: Any) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan
    )


def _arm_order(arm: Arm, roles: dict[str, str]) -> tuple[int, str, float]:
    """base first, then the baselines, then the losses in the paper's order (λ ascending), then
    the other named arms."""
    from seglm.losses import LOSS_NAMES

    if arm.loss == BASE:
        return (0, "", 0.0)
    if arm.name in roles:
        return (1 + BASELINES.index(roles[arm.name]), arm.name, arm.lam or 0.0)
    rank = LOSS_NAMES.index(arm.loss) if arm.loss in LOSS_NAMES else len(LOSS_NAMES)
    return (1 + len(BASELINES) + rank, arm.loss, arm.lam or 0.0)


# -- ROSCOE scores of the predictions ----------------------------------------------------------

EMBEDDING_FAMILIES = ("semantic_alignment", "semantic_similarity")


def score_roscoe(
    root: str | Path, families: Sequence[str] = EMBEDDING_FAMILIES, progress: bool = True
) -> list[Path]:
    """Score every finished cell's predictions with ROSCOE against their questions, into the
    cell's roscoe.jsonl (cells that have one are skipped); returns the folders scored.

    The default families need only sentence and token embeddings (all-MiniLM-L6-v2 offline);
    docs/roscoe.md says which models the others need and what they cost."""
    from seglm.metrics.roscoe import RoscoeConfig, RoscoeScorer

    root = Path(root)
    cells = finished_cells(root, grid_cells(read_grid_file(root)))
    folders = [root / c.relative_dir for c in cells]
    pending = [folder for folder in folders if not (folder / ROSCOE_FILE).is_file()]
    if not pending:
        return []
    data_dir = read_grid_file(root).get("train", {}).get("data_dir")
    scorer = RoscoeScorer(RoscoeConfig(families=tuple(families), progress=progress))
    for folder in pending:
        records = _read_predictions(folder)
        questions = _questions(folder, data_dir)
        chains = [{"source": questions[r["id"]], "hypothesis": r["prediction"]} for r in records]
        scores = scorer.score(chains).scores
        lines = [
            json.dumps({"id": r["id"], **s}) + "\n" for r, s in zip(records, scores, strict=True)
        ]
        (folder / ROSCOE_FILE).write_text("".join(lines))
    return pending


def _questions(folder: Path, data_dir: str | None) -> dict[str, str]:
    """Each evaluated example's question (ROSCOE's source), by id, from the evaluated task."""
    from seglm.tasks import get_task

    settings = read_json(folder / SETTINGS_FILE) or {}
    # The question does not depend on how the prompt is rendered (a chat template needs a
    # tokenizer that this does not load).
    options = {**(settings.get("task_options") or {}), "prompt_style": "plain"}
    task = get_task(settings["task"], **options)
    return {e.id: e.source for e in task.load(settings["split"], data_dir=data_dir)}


# -- statistics --------------------------------------------------------------------------------


@dataclass
class Comparison:
    """An arm against one baseline arm, paired on the same seeds and examples."""

    baseline: str  # the baseline arm's name
    differences: dict[str, PairedDifference]  # per main metric
    holm: dict[str, float | None]  # per metric: p corrected across the arms of this baseline
    mcnemar: McNemar | None  # exact match


@dataclass
class ArmStats:
    arm: str
    seeds: int
    examples: int
    estimates: dict[str, Estimate]  # per main metric
    versus: dict[str, Comparison]  # per baseline role (CE(all), ...) other than the arm itself

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


def arm_stats(group: Group, resamples: int, seed: int) -> list[ArmStats]:
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
        results.append(ArmStats(arm.name, len(arm.seeds), len(group.ids), estimates, versus))
    _correct_for_multiple_comparisons(results, metrics)
    return results


def _correct_for_multiple_comparisons(results: list[ArmStats], metrics: Sequence[str]) -> None:
    """Holm across the trained arms compared with one baseline, per baseline and metric (the
    base model's comparison is shown, not tested)."""
    for role in BASELINES:
        family = [s for s in results if role in s.versus and s.arm != BASE]
        for metric in metrics:
            found = [s.versus[role].differences.get(metric) for s in family]
            corrected = holm([d.p_value if d else None for d in found])
            for member, p_value in zip(family, corrected, strict=True):
                member.versus[role].holm[metric] = p_value


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
    ce_em, best_em = ce.estimates["exact_match"].mean, best.estimates["exact_match"].mean
    return Headline(
        best.arm,
        len(candidates),
        ce_em,
        best_em,
        relative_gain(best_em, ce_em),
        absolute,
        p_bonferroni,
    )


# -- figures -----------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


LOSS_COLOURS = {
    BASE: "#c7c7c7",
    CE: "#6b6b6b",
    "focal": "#1f77b4",
    "sadl": "#ff7f0e",
    "gdice": "#2ca02c",
    "lovasz": "#d62728",
    "dft": "#17becf",
}
BASELINE_COLOURS = {CE_ALL: LOSS_COLOURS[CE], CE_ANSWER: "#8c564b", CONTROL: "#e377c2"}
OTHER_COLOURS = ("#9467bd", "#bcbd22", "#7f7f7f", "#aec7e8")


def _colours(group: Group) -> dict[str, Any]:
    """One colour per loss (the same in every figure); its λ variants lighter as λ falls."""
    from matplotlib.colors import to_rgb

    colours: dict[str, Any] = {}
    by_loss: dict[str, list[Arm]] = defaultdict(list)
    for arm in group.arms.values():
        by_loss[group.roles.get(arm.name, arm.loss)].append(arm)
    others = iter(OTHER_COLOURS * len(by_loss))
    for loss, arms in by_loss.items():
        colour = BASELINE_COLOURS.get(loss) or LOSS_COLOURS.get(loss) or next(others)
        base = np.array(to_rgb(colour))
        ordered = sorted(arms, key=lambda arm: -(arm.lam or 0.0))
        for rank, arm in enumerate(ordered):
            lighten = 0.55 * rank / max(1, len(ordered) - 1) if len(ordered) > 1 else 0.0
            colours[arm.name] = tuple(base + (1 - base) * lighten)
    return colours


def _whiskers(estimates: Sequence[Estimate | None]) -> np.ndarray:
    """Error-bar lengths in percent below and above each mean (0 where there is no estimate)."""
    below = [e.mean - e.low if e else 0.0 for e in estimates]
    above = [e.high - e.mean if e else 0.0 for e in estimates]
    # Rounding can put a degenerate interval's bound a hair past its mean.
    return np.clip(100 * np.array([below, above]), 0, None)


def _percent_axis(axes: Axes, label: str) -> None:
    axes.set_ylabel(f"{label} (%)")
    axes.grid(axis="y", alpha=0.3)


def plot_main_metrics(group: Group, stats: list[ArmStats], path: Path) -> bool:
    metrics = [m for m in MAIN_METRICS if any(m in s.estimates for s in stats)]
    figure = _figure(4.2 * len(metrics) + 0.6, 4.2)
    colours = _colours(group)
    for axes, metric in zip(
        figure.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True
    ):
        shown = [s for s in stats if metric in s.estimates]
        for position, s in enumerate(shown):
            estimate = s.estimates[metric]
            axes.bar(position, 100 * estimate.mean, color=colours[s.arm])
            axes.errorbar(
                position, 100 * estimate.mean, yerr=_whiskers([estimate]), color="black", capsize=4
            )
            seeds = np.nanmean(group.arms[s.arm].values[metric], axis=1)
            axes.scatter(
                [position] * len(seeds),
                100 * seeds,
                color="white",
                edgecolor="black",
                s=14,
                zorder=3,
                label="one seed" if position == 0 else None,
            )
        axes.set_xticks(range(len(shown)), [s.arm for s in shown], rotation=30, ha="right")
        axes.set_xlabel("arm (loss-lamλ, λ = weight of CE)")
        _percent_axis(axes, LABELS[metric])
        axes.set_title(f"{LABELS[metric]}: mean, 95% CI")
        axes.legend(loc="upper left", fontsize="small")
    figure.suptitle(f"{group.task} / {group.model}, {len(group.ids)} test examples")
    figure.savefig(path)
    return True


def plot_lambda_sweep(group: Group, stats: list[ArmStats], path: Path) -> bool:
    """EM and IoU against λ for every loss that ran at several λ; CE is λ = 1."""
    by_arm = {s.arm: s for s in stats}
    losses = defaultdict(list)
    for arm in group.arms.values():
        if arm.loss not in (BASE, CE):
            losses[arm.loss].append(arm)
    swept = {loss: sorted(arms, key=lambda a: a.lam or 0.0) for loss, arms in losses.items()}
    swept = {loss: arms for loss, arms in swept.items() if len(arms) >= 2}
    if not swept:
        return False
    ce = next((s for s in stats if group.roles.get(s.arm) == CE_ALL), None)
    metrics = [m for m in MAIN_METRICS if any(m in s.estimates for s in stats)]
    figure = _figure(4.6 * len(metrics), 4.0)
    for axes, metric in zip(
        figure.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True
    ):
        for loss, arms in swept.items():
            points = [(a.lam, by_arm[a.name].estimates.get(metric)) for a in arms]
            if ce is not None and metric in ce.estimates:
                points.append((1.0, ce.estimates[metric]))
            points = [(lam, e) for lam, e in points if e is not None]
            axes.errorbar(
                [lam for lam, _ in points],
                [100 * e.mean for _, e in points],
                yerr=_whiskers([e for _, e in points]),
                marker="o",
                capsize=3,
                color=LOSS_COLOURS.get(loss, "#9467bd"),
                label=f"CE + {loss}",
            )
        if ce is not None and metric in ce.estimates:
            axes.axhline(
                100 * ce.estimates[metric].mean,
                color=LOSS_COLOURS[CE],
                linestyle="--",
                linewidth=1,
                label="CE alone (λ = 1)",
            )
        axes.set_xlabel("λ (weight of CE; 1 − λ on the loss)")
        _percent_axis(axes, LABELS[metric])
        axes.set_title(f"{LABELS[metric]} against λ (mean, 95% CI)")
        axes.legend(fontsize="small")
    figure.suptitle(f"λ sweep: {group.task} / {group.model}")
    figure.savefig(path)
    return True


def plot_error_types(group: Group, path: Path, resamples: int, seed: int) -> bool:
    arms = [a for a in group.arms.values() if any(t in a.values for t in ERROR_TYPES)]
    if not arms:
        return False
    figure = _figure(min(16.0, max(9.0, 3.0 + 0.3 * len(ERROR_TYPES) * len(arms))), 4.6)
    axes = figure.subplots()
    colours = _colours(group)
    width = 0.8 / len(arms)
    for index, arm in enumerate(arms):
        estimates = [
            bootstrap_mean(arm.values[t], resamples, seed=seed) if t in arm.values else None
            for t in ERROR_TYPES
        ]
        positions = np.arange(len(ERROR_TYPES)) + (index - (len(arms) - 1) / 2) * width
        axes.bar(
            positions,
            [100 * e.mean if e else np.nan for e in estimates],
            width,
            yerr=_whiskers(estimates),
            capsize=2,
            color=colours[arm.name],
            label=arm.name,
        )
    axes.set_xticks(range(len(ERROR_TYPES)), [LABELS[t].replace(" ", "\n") for t in ERROR_TYPES])
    axes.set_xlabel("error type (docs/metrics.md defines each rate)")
    _percent_axis(axes, "mean rate per example")
    axes.set_title(f"Reasoning-step errors per arm (mean, 95% CI)\n{group.task} / {group.model}")
    axes.legend(fontsize="small", title="arm", loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.savefig(path)
    return True


def _curves(logs: list[list[dict[str, Any]]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean of ``key`` over seeds at each logged training step."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for events in logs:
        for event in events:
            if "loss" in event and isinstance(event.get(key), int | float):
                by_step[int(event["step"])].append(float(event[key]))
    if not by_step:
        return None
    steps = np.array(sorted(by_step))
    return steps, np.array([np.mean(by_step[s]) for s in steps])


def _loss_components(arms: Sequence[Arm]) -> list[str]:
    """The loss terms logged by any arm, CE first."""
    found = {
        match.group(1)
        for arm in arms
        for events in arm.logs
        for event in events
        for key in event
        if (match := COMPONENT.match(key))
    }
    return sorted(found, key=lambda name: (name != CE, name))


def plot_training_curves(group: Group, path: Path) -> bool:
    trained = [a for a in group.arms.values() if a.loss != BASE and any(a.logs)]
    if not trained:
        return False
    keys = ["loss", *(f"loss_{c}" for c in _loss_components(trained))]
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure = _figure(4.2 * columns + 1.8, 3.3 * rows)
    colours = _colours(group)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, key in zip(panels, keys, strict=False):
        for arm in trained:
            curve = _curves(arm.logs, key)
            if curve is not None:
                axes.plot(*curve, color=colours[arm.name], label=arm.name, linewidth=1.3)
        title = "total objective" if key == "loss" else f"{key[5:]} term (unweighted)"
        axes.set_title(title)
        axes.set_xlabel("optimiser step")
        axes.set_ylabel("loss (mean over seeds)")
        axes.grid(alpha=0.3)
    for axes in panels[len(keys) :]:
        axes.set_visible(False)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="small", title="arm")
    figure.suptitle(f"Training curves per loss term: {group.task} / {group.model}")
    figure.savefig(path)
    return True


def correlations(group: Group) -> dict[str, Any] | None:
    """Pearson r between the ROSCOE scores present, exact match and IoU, over every prediction
    of the group's finished cells; None when no prediction has a ROSCOE score."""
    from seglm.metrics.correlations import pearson_correlations
    from seglm.metrics.roscoe import SCORE_NAMES

    records = [record for arm in group.arms.values() for record in arm.records]
    present = [n for n in SCORE_NAMES if any(r.get(n) is not None for r in records)]
    if not present:
        return None
    columns = [*present, *(m for m in MAIN_METRICS if any(r.get(m) is not None for r in records))]
    return pearson_correlations(records, columns)


def plot_correlations(result: dict[str, Any], title: str, path: Path) -> None:
    columns = result["columns"]
    size = len(columns)
    matrix = np.eye(size)
    for pair in result["pairs"]:
        i, j = columns.index(pair["x"]), columns.index(pair["y"])
        matrix[i, j] = matrix[j, i] = np.nan if pair["r"] is None else pair["r"]
    figure = _figure(max(6.0, 1.6 + 0.62 * size), max(4.8, 1.0 + 0.55 * size))
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-1, vmax=1)
    axes.set_xticks(range(size), columns, rotation=45, ha="right")
    axes.set_yticks(range(size), columns)
    for i in range(size):
        for j in range(size):
            text = "n/a" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}"
            axes.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(np.nan_to_num(matrix[i, j])) > 0.6 else "black",
            )
    figure.colorbar(image, ax=axes, label="Pearson r")
    axes.set_title(f"{title}\nPearson r over {result['n_records']} predictions")
    figure.savefig(path)


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


def build_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Report:
    """Read a runs folder, compute the statistics, draw the figures and write report.md and
    report.json (into ``out_dir``, by default the runs folder)."""
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    groups = load_groups(root)
    rows = summarize(root)
    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    reports = [_group_report(group, out, resamples, seed) for group in groups]
    report = Report(out / REPORT_FILE, reports, rows)
    grid = read_grid_file(root)
    report.path.write_text(render_markdown(report, grid, out, resamples), encoding="utf-8")
    (out / REPORT_JSON).write_text(json.dumps(report_json(report), indent=2) + "\n")
    return report


def _group_report(group: Group, out: Path, resamples: int, seed: int) -> GroupReport:
    stats = arm_stats(group, resamples, seed)
    folder = out / FIGURES_DIR
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
    "main": "Exact match and IoU per arm: bars are means over seeds and examples, whiskers 95% "
    "bootstrap intervals, dots the mean of each seed.",
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
        f"{len(status['pending'])} pending.",
    ]
    for row in status["failed"]:
        lines.append(f"- failed: `{row['dir']}`: {row.get('error', '')} (see its error.txt)")
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
