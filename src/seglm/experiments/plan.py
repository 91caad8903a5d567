"""Each cell's plan, computed once and handed to whichever runner runs the cell (in this
process, in a worker process, or as a submitit job): its folder, its training config, and how it
is evaluated. The checks before anything trains read the plans."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seglm.config import ConfigError, EvalConfig, TrainConfig
from seglm.experiments.grid import CE, Cell, Grid, GridError, cell_folder


@dataclass(frozen=True)
class CellPlan:
    """One cell, resolved: ``train`` is None for the untrained model; ``eval`` carries the task,
    its options, the data folder and the trust in custom code from the cell's training
    settings, so evaluation needs nothing from the run folder but its weights."""

    cell: Cell
    folder: Path
    train: TrainConfig | None
    eval: EvalConfig


def plan_cells(grid: Grid, root: Path) -> list[CellPlan]:
    """The plan of each cell of ``grid`` under the runs folder ``root``, in the grid's order."""
    return [plan_cell(grid, cell, root) for cell in grid.cells()]


def plan_cell(grid: Grid, cell: Cell, root: Path) -> CellPlan:
    # The untrained model is evaluated with the settings its trained cells have.
    shared = Cell(cell.task, cell.model, CE, 1.0, grid.seeds[0]) if cell.is_base else cell
    config = cell_config(grid, shared, root)
    evaluation = dataclasses.replace(
        grid.eval,
        task=config.task,
        task_options=config.task_options,
        data_dir=config.data_dir,
        # The grid file's setting (what trained the cell), not a run folder's config.yaml.
        trust_remote_code=config.trust_remote_code,
    )
    train = None if cell.is_base else config
    return CellPlan(cell, cell_folder(root, cell), train, evaluation)


def cell_config(grid: Grid, cell: Cell, root: Path) -> TrainConfig:
    """The training config of a (non-base) cell."""
    from seglm.config import resolve_config

    overrides = {
        **grid.train,
        **grid.model_train.get(cell.model, {}),
        "task": cell.task,
        "model": cell.model,
        "loss": cell.loss_spec,
        "seed": cell.seed,
        **({"train_limit": cell.train_size} if cell.train_size is not None else {}),
        "output_dir": str(root / cell.relative_dir),
        "run_name": "/".join(cell.relative_dir.parts),
    }
    try:
        return resolve_config(overrides=overrides)
    except ConfigError as error:
        raise GridError(f"cell {cell.relative_dir}: {error}") from None


# -- checks before anything trains -------------------------------------------------------------


def check_grid(grid: Grid, plans: list[CellPlan]) -> None:
    """Refuse what would fail in every cell: unknown tasks, splits or models, bad settings."""
    from seglm.tasks import get_task
    from seglm.train import (
        build_objective,
        check_environment,
        check_model_name,
        check_task_name,
        check_trainer_args,
    )

    trained = [plan for plan in plans if plan.train is not None]
    for task in grid.tasks:
        config = next(plan.train for plan in trained if plan.cell.task == task)
        assert config is not None
        try:
            check_task_name(task)
            task_data = get_task(task, **config.task_options)
            task_data.resolve_split(grid.eval.split)
            check_environment(config)
            if grid.train_sizes:
                _check_train_split_size(task_data, config, max(grid.train_sizes))
        except (ConfigError, ValueError) as error:
            raise GridError(f"task {task!r}: {error}") from None
    for model in grid.models:
        try:
            check_model_name(model)
        except ConfigError as error:
            raise GridError(str(error)) from None
        _check_tokenizer(model)
    for plan in trained:
        assert plan.train is not None
        try:
            build_objective(plan.train)
            check_trainer_args(plan.train)
        except ConfigError as error:
            raise GridError(f"cell {plan.cell.relative_dir}: {error}") from None


def _check_train_split_size(task: Any, config: TrainConfig, size: int) -> None:
    """A training-size sweep must train on as many examples as each cell says: a split that
    holds fewer would silently repeat a smaller size."""
    found = len(task.load(config.train_split, data_dir=config.data_dir, limit=size))
    if found < size:
        hint = " (raise the task option train_size)" if config.task == "arith" else ""
        raise ConfigError(
            f"train_sizes: split {config.train_split!r} holds {found} examples, fewer than "
            f"the largest train size {size}{hint}"
        )


def _check_tokenizer(model: str) -> None:
    """A model that does not exist fails here, not in the first cell's training."""
    from seglm.models import load_tokenizer

    try:
        load_tokenizer(model)
    except Exception as error:  # any loader failure means the same: no such model here
        raise GridError(f"model {model!r} cannot be loaded: {error}") from None
