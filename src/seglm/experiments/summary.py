"""Where each cell stands (finished, failed, pending), and the grid's summary: one row per cell
(status, timings, metrics) in summary.csv and .json."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seglm.experiments.grid import SUMMARY_HEAD, Cell, distinct, grid_cells, read_grid_file
from seglm.runs import (
    CELL_ERROR_FILE,
    METRICS_FILE,
    SUMMARY_CSV,
    SUMMARY_JSON,
    TRAIN_REPORT_FILE,
    read_json,
    write_atomically,
)


def cell_status(folder: Path) -> str:
    """``finished`` (its metrics.json, written last, is there), ``failed`` (its error.txt is
    there: a rerun runs it again) or ``pending``."""
    if (folder / METRICS_FILE).is_file():
        return "finished"
    return "failed" if (folder / CELL_ERROR_FILE).is_file() else "pending"


def unfinished(root: Path, cells: Sequence[Cell]) -> list[Cell]:
    """The cells a run of the grid runs: failed or pending ones."""
    return [cell for cell in cells if cell_status(root / cell.relative_dir) != "finished"]


def finished_cells(root: Path, cells: Sequence[Cell]) -> list[Cell]:
    return [cell for cell in cells if cell_status(root / cell.relative_dir) == "finished"]


def cell_row(root: Path, cell: Cell) -> dict[str, Any]:
    """A cell's status, metrics and timings, as one summary row."""
    folder = root / cell.relative_dir
    row: dict[str, Any] = {
        "task": cell.task,
        "model": cell.model,
        "arm": cell.arm,
        "loss": cell.loss,
        "lambda": cell.lam,
        "train_size": cell.train_size,
        "seed": cell.seed,
        "dir": str(cell.relative_dir),
    }
    row["status"] = cell_status(folder)
    if row["status"] == "finished":
        metrics = read_json(folder / METRICS_FILE) or {}
        row["n"] = metrics.get("n")
        row["eval_s"] = (metrics.get("throughput") or {}).get("seconds")
        row.update(metrics.get("metrics", {}))
    elif row["status"] == "failed":
        lines = (folder / CELL_ERROR_FILE).read_text().strip().splitlines()
        row["error"] = lines[-1] if lines else "unknown error"
    trained = read_json(folder / TRAIN_REPORT_FILE) or {}
    row["train_s"] = trained.get("wall_time_s")
    row["steps"] = trained.get("global_step")
    return row


def summarize(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per cell of the folder's grid."""
    root = Path(root)
    return [cell_row(root, cell) for cell in grid_cells(read_grid_file(root))]


def write_summary(
    root: str | os.PathLike[str],
    grid_file: dict[str, Any] | None = None,
    cells: Sequence[Cell] | None = None,
) -> list[dict[str, Any]]:
    """summary.json (the grid and one row per cell) and summary.csv (the same rows);
    ``grid_file`` and ``cells``: the folder's grid.json and its cells, when the caller has them
    (a runner writes the summary after every cell)."""
    root = Path(root)
    if grid_file is None:
        grid_file = read_grid_file(root)
    rows = [
        cell_row(root, cell) for cell in (cells if cells is not None else grid_cells(grid_file))
    ]
    payload = {"grid": grid_file, "cells": rows}
    write_atomically(root / SUMMARY_JSON, json.dumps(payload, indent=2) + "\n")
    columns = distinct([*SUMMARY_HEAD, *(key for row in rows for key in row)])
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(root / SUMMARY_CSV, table.getvalue())
    return rows
