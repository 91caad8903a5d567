"""Grids of runs: one model fine-tuned with CE and with each loss, evaluated side by side.

A grid is tasks x models x arms x seeds. The arms are each loss at each λ, trained with
``λ·CE + (1 − λ)·loss`` (CE alone for ``ce``), and any *named arms*, each with its own loss spec
(``ce-answer: ce@answer=1``, the control ``ce=0.6,ce@answer=0.4``). Each *cell* trains one arm
with one seed and evaluates the result, in its own folder under the runs folder::

    RUNS/grid.json                                  what the grid is (checked on every rerun)
    RUNS/summary.csv, RUNS/summary.json             one row per cell: status, metrics, timings
    RUNS/{task}/{model}/base/                       the untrained model, evaluated (optional)
    RUNS/{task}/{model}/{loss}-lam{λ}/seed{s}/      a run folder (seglm.train) + its evaluation
    RUNS/{task}/{model}/{arm name}/seed{s}/         the same for a named arm

A cell is finished when its ``metrics.json`` exists: a rerun skips it, so an interrupted grid
resumes (a half-trained cell continues from its last checkpoint). A cell that fails writes its
traceback to ``error.txt`` and the grid goes on; a rerun tries it again. Cells that share a seed
share the data order (the Trainer's data seed) and every cell evaluates the same examples, so
differences between cells of one seed come from the loss. ``run_grid`` runs the cells one by one
in this process (or every n-th with ``shard``); ``seglm.cluster`` runs each as a submitit job
(a Slurm array). docs/experiments.md has the details.

Importing this module is cheap: training and evaluation load inside the functions.
"""

from __future__ import annotations

from seglm.experiments.grid import (
    BASE,
    CE,
    DEFAULT_LAMBDA,
    Cell,
    EvalSpec,
    Grid,
    GridError,
    cell_config,
    check_grid,
    grid_cells,
    is_main_process,
    load_grid,
    model_slug,
    prepare_root,
    read_grid_file,
    read_grid_values,
)
from seglm.experiments.runner import CellOutcome, GridRun, parse_shard, run_cell, run_grid
from seglm.experiments.summary import cell_row, finished_cells, summarize, write_summary

__all__ = [
    "BASE",
    "CE",
    "DEFAULT_LAMBDA",
    "Cell",
    "CellOutcome",
    "EvalSpec",
    "Grid",
    "GridError",
    "GridRun",
    "cell_config",
    "cell_row",
    "check_grid",
    "finished_cells",
    "grid_cells",
    "is_main_process",
    "load_grid",
    "model_slug",
    "parse_shard",
    "prepare_root",
    "read_grid_file",
    "read_grid_values",
    "run_cell",
    "run_grid",
    "summarize",
    "write_summary",
]
