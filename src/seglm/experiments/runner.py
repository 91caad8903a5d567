"""Running a grid's cells on this machine: train (or resume), evaluate, record failures; one
cell at a time in this process, or several side by side in worker processes."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import pickle
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seglm.checkpoints import last_complete_checkpoint
from seglm.config import TrainConfig
from seglm.experiments.grid import Cell, Grid, GridError, grid_cells, is_main_process, prepare_root
from seglm.experiments.plan import CellPlan, check_grid, plan_cells
from seglm.experiments.summary import (
    cell_problem,
    cell_problems,
    cell_status,
    summarize,
    unfinished,
    write_summary,
)
from seglm.folders import FolderBusy, FolderError, hold, remove_owned, write_owned
from seglm.json_lines import whole_lines
from seglm.runs import (
    CELL_ERROR_FILE,
    EVAL_SETTINGS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    ROSCOE_FILE,
    RUN_CONFIG_FILE,
    TRAIN_LOG_FILE,
    TRAIN_REPORT_FILE,
    write_atomically,
)


def _barrier() -> None:
    """Under a multi-process launch, ranks wait for rank 0 to finish writing a cell's training."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # finished, skipped (finished before), busy (another process runs it), failed
    seconds: float
    error: str | None = None
    repaired: str | None = None  # what of a damaged cell was redone, and why


CELL_ADVICE = "this run leaves the cell to it"


def run_cell(plan: CellPlan, progress: bool = True) -> CellOutcome:
    """Train (unless the base model or already trained) and evaluate one cell, holding its
    folder (another process that holds it leaves it to that one: ``busy``); a damaged cell is
    repaired from what is still whole. A failure is written to the cell's error.txt and
    returned, never raised."""
    started = time.perf_counter()
    held = hold(plan.folder, "grid cell", CELL_ADVICE) if is_main_process() else None
    try:
        with held or contextlib.nullcontext():
            return _run_held_cell(plan, progress, started)
    except FolderBusy as error:
        return CellOutcome(plan.cell, "busy", 0.0, str(error))
    except FolderError as error:  # the cell folder is not seglm's: nothing is written there
        return CellOutcome(plan.cell, "failed", time.perf_counter() - started, str(error))


def _run_held_cell(plan: CellPlan, progress: bool, started: float) -> CellOutcome:
    # Judged now that this process holds the folder: another may have finished it meanwhile.
    status = cell_status(plan.folder)
    if status == "finished":  # e.g. a requeued job whose cell had finished
        return _skipped(plan)
    repaired = None
    if status == "damaged":
        repaired = cell_problem(plan.folder)
        if is_main_process():
            repair_cell(plan.folder)
        _barrier()
    if is_main_process():
        remove_owned(plan.folder, [CELL_ERROR_FILE])
    try:
        if plan.train is not None:
            if not (plan.folder / TRAIN_REPORT_FILE).is_file():
                _train(plan.train, progress)
            _barrier()
        _evaluate(plan, progress)
    except Exception:  # one failed cell must not stop the grid
        return record_failure(plan.cell, plan.folder, traceback.format_exc(), started)
    return CellOutcome(plan.cell, "finished", time.perf_counter() - started, repaired=repaired)


def repair_cell(folder: Path) -> None:
    """Remove what of a damaged cell cannot be kept, so that the run redoes it from what is
    still whole: training's report or log damaged, the run is resumed from its last whole
    checkpoint (or trained again) and evaluated again; else the evaluation resumes from the
    predictions that read whole (a torn one is made again) and scores them again."""
    problems = cell_problems(folder)
    evaluation = [METRICS_FILE, ROSCOE_FILE]
    if TRAIN_REPORT_FILE in problems or TRAIN_LOG_FILE in problems:
        remove_owned(folder, [TRAIN_REPORT_FILE, *evaluation, PREDICTIONS_FILE, EVAL_SETTINGS_FILE])
        return
    if EVAL_SETTINGS_FILE in problems:  # the predictions cannot be vouched for without it
        evaluation += [PREDICTIONS_FILE, EVAL_SETTINGS_FILE]
    remove_owned(folder, evaluation)
    predictions = folder / PREDICTIONS_FILE
    if PREDICTIONS_FILE in problems and predictions.is_file():
        kept = [r for r in whole_lines(predictions) if isinstance(r.get("metrics"), dict)]
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in kept)
        write_atomically(predictions, text)


def _skipped(plan: CellPlan) -> CellOutcome:
    return CellOutcome(plan.cell, "skipped", 0.0)


# Seconds to wait for the folder of a cell whose worker died (see record_failure).
DEAD_WORKER_WAIT = 10.0


def record_failure(cell: Cell, folder: Path, text: str, started: float) -> CellOutcome:
    """The cell's error.txt (its last line is the summary row's error) and its outcome."""
    if is_main_process():
        # Held already when the failure is this process's. A worker that just died may hold it
        # until the system has reaped it (a moment, longer on a loaded machine); another live
        # process may hold it for good: wait a little, then leave the error to the summary.
        with contextlib.suppress(FolderError), hold(folder, "grid cell", wait=DEAD_WORKER_WAIT):
            write_owned(folder, CELL_ERROR_FILE, text)
    lines = text.strip().splitlines()
    return CellOutcome(cell, "failed", time.perf_counter() - started, lines[-1] if lines else None)


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


def _evaluate(plan: CellPlan, progress: bool) -> None:
    """Every rank evaluates its share of the examples and rank 0 writes the results
    (seglm.evaluate under a multi-process launch); a failure on any rank fails the cell on all,
    so the ranks start the next cell together."""
    from seglm.evaluate import evaluate, run_source  # looked up at call time: tests replace it

    model: Any = plan.cell.model
    if plan.train is not None:  # the weights the cell trained, with the config it trained them
        model = run_source(plan.folder, plan.train, plan.eval.trust_remote_code)
    evaluate(model, out_dir=plan.folder, config=plan.eval, progress=progress)


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
    workers: int = 1,
    on_cell: Callable[[int, int, CellOutcome], None] = lambda position, total, outcome: None,
) -> GridRun:
    """Check the grid, then run its unfinished cells (those of ``shard``), ``workers`` at a time
    (each in its own process with an equal share of the CPU cores; one: in this process),
    rewriting the summary after each. Raises :class:`GridError` before anything trains."""
    root = Path(root)
    started = time.perf_counter()
    if workers < 1:
        raise GridError(f"workers must be >= 1, got {workers}")
    if workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GridError(
            "workers > 1 runs cells side by side in processes of its own; under torchrun or "
            "accelerate launch, every process runs every cell: leave workers at 1"
        )
    plans = plan_cells(grid, root)
    check_grid(grid, plans)
    grid_file = prepare_root(grid, root)
    cells = grid_cells(grid_file)  # this grid and what earlier runs into the folder added
    mine = [plan for position, plan in enumerate(plans) if position % shard[1] == shard[0]]
    todo = set(unfinished(root, [plan.cell for plan in mine]))
    if workers > 1:  # the finished cells first, then the others as they finish
        skipped = [_skipped(plan) for plan in mine if plan.cell not in todo]
        pending = [plan for plan in mine if plan.cell in todo]
        ran = itertools.chain(skipped, run_side_by_side(pending, workers))
        if progress and pending and is_main_process():
            ran = _shown(ran, len(mine), workers)
    else:
        ran = (run_cell(plan, progress) if plan.cell in todo else _skipped(plan) for plan in mine)
    outcomes: list[CellOutcome] = []
    rows: list[dict[str, Any]] | None = None
    for position, outcome in enumerate(ran, start=1):
        outcomes.append(outcome)
        if is_main_process():
            rows = write_summary(root, grid_file, cells)
            on_cell(position, len(mine), outcome)
    if rows is None:  # nothing ran here, or another process writes the summary
        rows = summarize(root)
    return GridRun(root, outcomes, rows, time.perf_counter() - started)


def run_side_by_side(plans: Sequence[CellPlan], workers: int) -> Iterator[CellOutcome]:
    """Run the cells in ``workers`` processes at once, each cell whole in one of them, and each
    process with cores // workers threads; outcomes come as cells finish. A worker that dies
    (killed, out of memory) fails the cells it and the others had not finished: a rerun runs
    them again."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, _cores() // workers)
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),  # no torch state copied from here
        initializer=start_worker,
        initargs=(threads, *console_settings()),
    ) as pool:
        started = time.perf_counter()
        running = {pool.submit(run_cell, plan, False): plan for plan in plans}
        for future in as_completed(running):
            plan = running[future]
            try:
                yield future.result()
            except BrokenProcessPool as error:
                text = (
                    f"a worker process died before this cell finished ({error}); "
                    "the cells of the workers then running or waiting are left to a rerun\n"
                )
                yield record_failure(plan.cell, plan.folder, text, started)


def _shown(outcomes: Iterator[CellOutcome], total: int, workers: int) -> Iterator[CellOutcome]:
    """One rich progress line (cells done, time so far) while cells run in worker processes,
    which show none of their own; each cell's line is printed above it as it finishes."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(
        *columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True
    ) as bar:
        task = bar.add_task(f"cells, {workers} side by side", total=total)
        for outcome in outcomes:
            yield outcome
            bar.advance(task)


def console_settings() -> tuple[list[Any], dict[str, int]]:
    """This process's warnings filters and the log levels set on its loggers: what ``--verbose``
    or its absence chose (``seglm.cli.quiet_libraries``), which a spawned process does not
    inherit. Filters that cannot be sent to another process are left out."""
    filters = []
    for entry in warnings.filters:
        try:
            pickle.dumps(entry)
        except (pickle.PicklingError, TypeError, AttributeError):
            continue
        filters.append(entry)
    levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
    }
    return filters, levels


def start_worker(threads: int, filters: list[Any], levels: dict[str, int]) -> None:
    """A worker process: its share of the CPU, and the console its parent has (set after torch
    is imported, whose own filters the parent's list holds too when it imported torch)."""
    use_threads(threads)
    warnings.filters[:] = filters
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def use_threads(count: int) -> None:
    """A worker's share of the CPU: ``count`` threads for OpenMP and torch."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(count)
    import torch

    torch.set_num_threads(count)


def _cores() -> int:
    """The CPU cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1
