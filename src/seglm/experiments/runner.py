"""Running a grid's cells in this process: train (or resume), evaluate, record failures."""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seglm.config import TrainConfig
from seglm.experiments.grid import (
    CE,
    Cell,
    Grid,
    GridError,
    cell_config,
    check_grid,
    is_main_process,
    prepare_root,
)
from seglm.experiments.summary import summarize, write_summary

# Written last by seglm.evaluate and seglm.train: METRICS_FILE's presence finishes a cell.
from seglm.runs import (
    CELL_ERROR_FILE,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    TRAIN_REPORT_FILE,
    last_complete_checkpoint,
)


def _barrier() -> None:
    """Under a multi-process launch, ranks wait for rank 0 to finish writing a cell's training."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # finished, skipped (finished before), failed
    seconds: float
    error: str | None = None


def run_cell(grid: Grid, cell: Cell, root: Path, progress: bool = True) -> CellOutcome:
    """Train (unless the base model or already trained) and evaluate one cell; a failure is
    written to the cell's error.txt and returned, never raised."""
    folder = root / cell.relative_dir
    if (folder / METRICS_FILE).is_file():
        return CellOutcome(cell, "skipped", 0.0)
    started = time.perf_counter()
    (folder / CELL_ERROR_FILE).unlink(missing_ok=True)
    try:
        if cell.is_base:
            config = cell_config(grid, Cell(cell.task, cell.model, CE, 1.0, grid.seeds[0]), root)
            _evaluate(grid, cell.model, folder, config, config.task, progress)
        else:
            config = cell_config(grid, cell, root)
            if not (folder / TRAIN_REPORT_FILE).is_file():
                _train(config, progress)
            _barrier()
            _evaluate(grid, folder, folder, config, None, progress)
    except Exception as error:  # one failed cell must not stop the grid
        if is_main_process():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CELL_ERROR_FILE).write_text(traceback.format_exc())
        summary = f"{type(error).__name__}: {error}".splitlines()[0]
        return CellOutcome(cell, "failed", time.perf_counter() - started, summary)
    return CellOutcome(cell, "finished", time.perf_counter() - started)


def _train(config: TrainConfig, progress: bool) -> None:
    from seglm.models import free_memory
    from seglm.train import train

    folder = config.run_dir
    if (folder / RUN_CONFIG_FILE).is_file():
        # An interrupted attempt: continue from its last complete checkpoint (a kill while
        # saving leaves an incomplete one), or start it again.
        has_checkpoint = last_complete_checkpoint(folder)[0] is not None
        config = dataclasses.replace(config, resume=has_checkpoint, overwrite=not has_checkpoint)
    train(config, progress=progress)
    free_memory()  # the cell's evaluation loads the model again, on the same GPU


def _evaluate(
    grid: Grid,
    model_ref: str | Path,
    folder: Path,
    config: TrainConfig,
    task: str | None,
    progress: bool,
) -> None:
    """Every rank evaluates its share of the examples and rank 0 writes the results
    (seglm.evaluate under a multi-process launch); a failure on any rank fails the cell on all,
    so the ranks start the next cell together."""
    from seglm.evaluate import evaluate  # looked up at call time: tests replace it

    evaluate(
        str(model_ref),
        task,
        grid.eval.split,
        folder,
        task_options=config.task_options if task is not None else None,
        scoring=grid.eval.scoring,
        limit=grid.eval.limit,
        batch_size=grid.eval.batch_size,
        dtype=grid.eval.dtype,
        max_new_tokens=grid.eval.max_new_tokens,
        data_dir=config.data_dir,
        progress=progress,
        # The grid file's setting (what trained the cell), not the folder's config.yaml.
        trust_remote_code=config.trust_remote_code,
    )


@dataclass
class GridRun:
    root: Path
    outcomes: list[CellOutcome]
    rows: list[dict[str, Any]]
    seconds: float

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"``: this process runs the cells whose position modulo n is i."""
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise GridError(f"shard must look like i/n with 0 <= i < n, got {text!r}")
    return shard


def run_grid(
    grid: Grid,
    root: str | os.PathLike[str],
    *,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    on_cell: Callable[[int, int, CellOutcome], None] = lambda position, total, outcome: None,
) -> GridRun:
    """Check the grid, then run its unfinished cells (those of ``shard``) one by one, rewriting
    the summary after each. Raises :class:`GridError` before anything trains."""
    root = Path(root)
    started = time.perf_counter()
    check_grid(grid, root)
    prepare_root(grid, root)
    mine = [cell for i, cell in enumerate(grid.cells()) if i % shard[1] == shard[0]]
    outcomes = []
    rows: list[dict[str, Any]] | None = None
    for position, cell in enumerate(mine, start=1):
        outcome = run_cell(grid, cell, root, progress)
        outcomes.append(outcome)
        if is_main_process():
            rows = write_summary(root)
            on_cell(position, len(mine), outcome)
    if rows is None:  # nothing ran here, or another process writes the summary
        rows = summarize(root)
    return GridRun(root, outcomes, rows, time.perf_counter() - started)
