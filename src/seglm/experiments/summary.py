"""The grid's summary: one row per cell (status, timings, metrics) in summary.csv and .json."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seglm.experiments.grid import SUMMARY_HEAD, Cell, distinct, grid_cells, read_grid_file

# Written last by seglm.evaluate and seglm.train: METRICS_FILE's presence finishes a cell.
from seglm.runs import (
    CELL_ERROR_FILE,
    METRICS_FILE,
    SUMMARY_CSV,
    SUMMARY_JSON,
    TRAIN_REPORT_FILE,
    read_json,
    write_atomically,
)


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
    metrics = read_json(folder / METRICS_FILE)
    trained = read_json(folder / TRAIN_REPORT_FILE) or {}
    if metrics is not None:
        row["status"] = "finished"
        row["n"] = metrics.get("n")
        row["eval_s"] = (metrics.get("throughput") or {}).get("seconds")
        row.update(metrics.get("metrics", {}))
    elif (folder / CELL_ERROR_FILE).is_file():
        row["status"] = "failed"
        lines = (folder / CELL_ERROR_FILE).read_text().strip().splitlines()
        row["error"] = lines[-1] if lines else "unknown error"
    else:
        row["status"] = "pending"
    row["train_s"] = trained.get("wall_time_s")
    row["steps"] = trained.get("global_step")
    return row


def summarize(
    root: str | os.PathLike[str], grid_file: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per cell of the folder's grid (``grid_file``: grid.json, if already read)."""
    root = Path(root)
    cells = grid_cells(grid_file if grid_file is not None else read_grid_file(root))
    return [cell_row(root, cell) for cell in cells]


def write_summary(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """summary.json (the grid and one row per cell) and summary.csv (the same rows)."""
    root = Path(root)
    grid_file = read_grid_file(root)
    rows = summarize(root, grid_file)
    payload = {"grid": grid_file, "cells": rows}
    write_atomically(root / SUMMARY_JSON, json.dumps(payload, indent=2) + "\n")
    columns = distinct([*SUMMARY_HEAD, *(key for row in rows for key in row)])
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(root / SUMMARY_CSV, table.getvalue())
    return rows


def finished_cells(root: Path, cells: Sequence[Cell]) -> list[Cell]:
    return [cell for cell in cells if (root / cell.relative_dir / METRICS_FILE).is_file()]
