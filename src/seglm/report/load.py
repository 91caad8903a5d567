"""Reading a runs folder for the report: the finished cells of each arm, paired by seed and
example, and which arms are the baselines. A grid with training sizes gives one group per size,
each with the untrained model."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglm.experiments import (
    BASE,
    Cell,
    GridError,
    cell_folder,
    finished_cells,
    grid_cells,
    model_slug,
    read_grid_file,
)
from seglm.json_lines import read_jsonl
from seglm.losses.spec import LossSpec
from seglm.runs import (
    EVAL_SETTINGS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    ROSCOE_FILE,
    TRAIN_LOG_FILE,
    read_json,
)

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
    "acc_norm": "acc_norm (per byte)",
    "missing_steps": "missing steps",
    "extra_steps": "extra steps",
    "repetitions": "repetitions",
    "wrong_operators": "wrong operators",
    "inverted_operands": "inverted operands",
}
# The losses the paper compared, in its order: the report lists their arms first.
PAPER_ORDER = ("focal", "sadl", "gdice", "lovasz")
COMPONENT = re.compile(r"^loss_([a-z0-9_]+(?:@[a-z]+)?)$")


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
    predictions: list[list[str]] = field(default_factory=list)  # per seed: each example's text
    logs: list[list[dict[str, Any]]] = field(default_factory=list)  # per seed: log events
    records: list[dict[str, Any]] = field(default_factory=list)  # per-example scores, pooled


@dataclass
class Group:
    """Every finished arm of one (task, model, training size), on the same examples;
    ``evaluation`` is the cells' eval_config.json (task, task options, split, ...)."""

    task: str
    model: str
    ids: list[str]
    arms: dict[str, Arm]
    roles: dict[str, str] = field(default_factory=dict)  # arm name -> baseline it is, if any
    train_size: int | None = None
    references: list[str] = field(default_factory=list)  # each example's reference answer
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return figure_slug(self.task, self.model, self.train_size)

    @property
    def title(self) -> str:
        size = "" if self.train_size is None else f", {self.train_size} training examples"
        return f"{self.task} / {self.model}{size}"


def figure_slug(task: str, model: str, train_size: int | None = None) -> str:
    """The start of a figure's file name: ``arith-smollm2-135m-instruct-n160``."""
    size = "" if train_size is None else f"-n{train_size}"
    return f"{task}-{model_slug(model)}{size}"


def read_cell_predictions(folder: Path) -> list[dict[str, Any]]:
    """The evaluated predictions (metrics.json's ``n`` first lines: seglm.evaluate keeps
    predictions of another selection after them, unscored)."""
    metrics = read_json(folder / METRICS_FILE) or {}
    records = read_jsonl(folder / PREDICTIONS_FILE)
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
    return {row["id"]: row for row in read_jsonl(folder / ROSCOE_FILE, missing_ok=True)}


def _read_log(folder: Path) -> list[dict[str, Any]]:
    return read_jsonl(folder / TRAIN_LOG_FILE, missing_ok=True)


def _check_same_evaluation(cells: Sequence[tuple[Cell, Path]]) -> None:
    """Cells compared on one table must have evaluated the same way."""
    first_cell, first_folder = cells[0]
    reference = read_json(first_folder / EVAL_SETTINGS_FILE) or {}
    for cell, folder in cells[1:]:
        settings = read_json(folder / EVAL_SETTINGS_FILE) or {}
        for key in COMPARED_SETTINGS:
            if settings.get(key) != reference.get(key):
                raise GridError(
                    f"cells {first_cell.relative_dir} and {cell.relative_dir} were evaluated "
                    f"differently ({key}: {reference.get(key)!r} vs {settings.get(key)!r}); "
                    "they cannot be compared"
                )


def load_groups(root: Path) -> list[Group]:
    """Every (task, model, training size) with at least one finished cell, the untrained
    model's cell in each size's group; refuses cells that were evaluated on different examples
    or settings."""
    grid = read_grid_file(root)
    cells = finished_cells(root, grid_cells(grid))
    if not cells:
        raise GridError(
            f"{root}: no finished cell (no {METRICS_FILE} in any cell folder); run "
            "`seglm compare` first, or see summary.csv for failed cells"
        )
    ce_scope = str(grid.get("train", {}).get("ce_scope", "all"))
    bases: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    trained: dict[tuple[str, str, int | None], list[Cell]] = defaultdict(list)
    for cell in cells:
        if cell.is_base:
            bases[(cell.task, cell.model)].append(cell)
        else:
            trained[(cell.task, cell.model, cell.train_size)].append(cell)
    groups = []
    for pair in dict.fromkeys((cell.task, cell.model) for cell in cells):
        # Only the untrained model finished: a group of its own.
        keys = [key for key in trained if key[:2] == pair] or [(*pair, None)]
        for key in keys:
            groups.append(_load_group(root, key, bases[pair] + trained[key], ce_scope))
    return groups


def baseline_roles(arms: Sequence[Arm], ce_scope: str) -> dict[str, str]:
    """Which arms are the baselines: CE(all), CE(answer), and the weighting control
    ``λ·CE(all) + (1 − λ)·CE(answer)`` (one per λ; each loss arm meets the one at its own λ)."""
    roles: dict[str, str] = {}
    for arm in arms:
        terms = LossSpec.parse(arm.spec).ce_weights(ce_scope) if arm.spec else None
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
    return None if arm.spec is None else LossSpec.parse(arm.spec).ce_all_weight(ce_scope)


def _load_group(
    root: Path, key: tuple[str, str, int | None], cells: list[Cell], ce_scope: str
) -> Group:
    task, model, train_size = key
    folders = [(cell, cell_folder(root, cell)) for cell in cells]
    _check_same_evaluation(folders)
    ids: list[str] | None = None
    references: list[str] = []
    arms: dict[str, Arm] = {}
    for cell, folder in folders:
        records = read_cell_predictions(folder)
        cell_ids = [record["id"] for record in records]
        if ids is None:
            ids, first = cell_ids, cell
            references = [str(record.get("reference", "")) for record in records]
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
    evaluation = read_json(folders[0][1] / EVAL_SETTINGS_FILE) or {}
    return Group(
        task,
        model,
        ids,
        {arm.name: arm for arm in ordered},
        roles,
        train_size,
        references,
        evaluation,
    )


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
    arm.predictions.append([str(record.get("prediction", "")) for record in records])
    arm.logs.append(_read_log(folder))
    roscoe = _read_roscoe_file(folder)
    for record in records:
        scores = {name: record["metrics"].get(name) for name in MAIN_METRICS}
        arm.records.append({**scores, **_roscoe_scores(record, roscoe)})


def _number(value: Any) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan
    )


def _arm_order(arm: Arm, roles: dict[str, str]) -> tuple[int, int, str, float]:
    """base first, then the baselines, then the losses (the paper's four in its order, then the
    others by name; λ ascending), then the other named arms."""
    if arm.loss == BASE:
        return (0, 0, "", 0.0)
    if arm.name in roles:
        return (1 + BASELINES.index(roles[arm.name]), 0, arm.name, arm.lam or 0.0)
    if arm.spec is not None and arm.loss == arm.name:  # a named arm
        return (2 + len(BASELINES), 0, arm.name, 0.0)
    rank = PAPER_ORDER.index(arm.loss) if arm.loss in PAPER_ORDER else len(PAPER_ORDER)
    return (1 + len(BASELINES), rank, arm.loss, arm.lam or 0.0)
