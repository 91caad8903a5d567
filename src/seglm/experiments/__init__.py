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

A cell is finished when its ``metrics.json`` exists and its files are whole and agree
(``cell_status``): a rerun skips it, so an interrupted grid resumes (a half-trained cell
continues from its last checkpoint), and repairs a damaged one from what is still whole. A cell
that fails writes its traceback to ``error.txt`` and the grid goes on; a rerun tries it again.
Each cell's folder is held by the process that runs it, so several processes (shards) may run
one grid. Cells
that share a seed share the data order (the Trainer's data seed) and every cell evaluates the
same examples, so differences between cells of one seed come from the loss.

Each cell's plan (its training config, its evaluation settings, its folder) is computed once
(``plan_cells``) and handed to a runner: ``run_grid`` runs the cells one by one in this process,
or ``workers`` at a time in processes of their own (every n-th with ``shard``); ``seglm.cluster``
runs each as a submitit job (a Slurm array). docs/experiments.md has the details.

Importing this module is cheap: training and evaluation load inside the functions.
"""

from __future__ import annotations

from seglm.config import EvalConfig
from seglm.experiments.grid import (
    BASE,
    CE,
    DEFAULT_LAMBDA,
    Cell,
    Grid,
    GridError,
    cell_folder,
    grid_cells,
    is_main_process,
    load_grid,
    model_slug,
    prepare_root,
    read_grid_file,
    read_grid_values,
)
from seglm.experiments.plan import CellPlan, cell_config, check_grid, plan_cell, plan_cells
from seglm.experiments.runner import (
    CellOutcome,
    GridRun,
    parse_shard,
    record_failure,
    repair_cell,
    run_cell,
    run_grid,
)
from seglm.experiments.summary import (
    cell_problem,
    cell_problems,
    cell_row,
    cell_status,
    finished_cells,
    summarize,
    unfinished,
    write_summary,
)

__all__ = [
    "BASE",
    "CE",
    "DEFAULT_LAMBDA",
    "Cell",
    "CellOutcome",
    "CellPlan",
    "EvalConfig",
    "Grid",
    "GridError",
    "GridRun",
    "cell_config",
    "cell_folder",
    "cell_problem",
    "cell_problems",
    "cell_row",
    "cell_status",
    "check_grid",
    "finished_cells",
    "grid_cells",
    "is_main_process",
    "load_grid",
    "model_slug",
    "parse_shard",
    "plan_cell",
    "plan_cells",
    "prepare_root",
    "read_grid_file",
    "read_grid_values",
    "record_failure",
    "repair_cell",
    "run_cell",
    "run_grid",
    "summarize",
    "unfinished",
    "write_summary",
]
