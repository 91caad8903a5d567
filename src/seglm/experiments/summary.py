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

from seglm.experiments.grid import (
    SUMMARY_HEAD,
    Cell,
    GridError,
    cell_folder,
    distinct,
    grid_cells,
    holding_root,
    read_grid_file,
)
from seglm.folders import FolderError, write_owned
from seglm.json_lines import first_damage, read_jsonl
from seglm.runs import (
    CELL_ERROR_FILE,
    EVAL_SETTINGS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    ROSCOE_FILE,
    RUN_CONFIG_FILE,
    SUMMARY_CSV,
    SUMMARY_JSON,
    TRAIN_LOG_FILE,
    TRAIN_REPORT_FILE,
    read_json,
)


def cell_status(folder: Path) -> str:
    """``finished`` (its metrics.json, written last, is there and its files are whole and agree:
    :func:`cell_problem`), ``damaged`` (metrics.json is there, but not the rest: a rerun repairs
    it), ``failed`` (its error.txt is there: a rerun runs it again) or ``pending``."""
    if (folder / METRICS_FILE).is_file():
        return "damaged" if cell_problem(folder) else "finished"
    return "failed" if (folder / CELL_ERROR_FILE).is_file() else "pending"


def cell_problem(folder: Path) -> str | None:
    """Why a cell with a metrics.json is not finished: one of its files is missing, does not
    read whole, or disagrees with the others (metrics.json counts n examples: the predictions
    file holds them, each once, with their metrics, and the predictions of another selection
    that metrics.json counts as unscored); None when it is whole."""
    problems = cell_problems(folder)
    return "; ".join(f"{name}: {why}" for name, why in problems.items()) or None


def cell_problems(folder: Path) -> dict[str, str]:
    """Each damaged file of a cell, with why (see :func:`cell_problem`)."""
    problems: dict[str, str] = {}
    metrics = read_json(folder / METRICS_FILE)
    n = metrics.get("n") if metrics else None
    if metrics is None or not isinstance(n, int) or isinstance(n, bool) or n < 0:
        problems[METRICS_FILE] = "not a JSON object with the example count n"
    if read_json(folder / EVAL_SETTINGS_FILE) is None:
        problems[EVAL_SETTINGS_FILE] = "missing or not a JSON object"
    predictions = _predictions_problem(folder / PREDICTIONS_FILE, metrics)
    if predictions:
        problems[PREDICTIONS_FILE] = predictions
    trained = (folder / RUN_CONFIG_FILE).is_file()  # the untrained model's cell has no run
    if trained and read_json(folder / TRAIN_REPORT_FILE) is None:
        problems[TRAIN_REPORT_FILE] = "missing or not a JSON object"
    for name in (TRAIN_LOG_FILE, ROSCOE_FILE):
        damage = (folder / name).is_file() and first_damage(folder / name)
        if damage:
            problems[name] = damage
    return problems


def _predictions_problem(path: Path, metrics: dict[str, Any] | None) -> str | None:
    if not path.is_file():
        return "missing"
    damage = first_damage(path)
    if damage:
        return damage
    records = read_jsonl(path)
    lacking = next((r for r in records if not isinstance(r.get("metrics"), dict)), None)
    if lacking is not None or any(not isinstance(r.get("id"), str) for r in records):
        return "a prediction without its id or metrics"
    if metrics is None or not isinstance(metrics.get("n"), int):
        return None  # metrics.json's own problem says it
    n, unscored = metrics["n"], metrics.get("unscored_predictions")
    ids = [record["id"] for record in records[:n]]
    if len(ids) < n:
        return f"{len(records)} predictions, but metrics.json counts {n}"
    if len(set(ids)) < n:
        return "an example's prediction is there twice"
    if isinstance(unscored, int) and len(records) != n + unscored:
        return f"{len(records)} predictions, but metrics.json counts {n} and {unscored} unscored"
    return None


def unfinished(root: Path, cells: Sequence[Cell]) -> list[Cell]:
    """The cells a run of the grid runs: failed, damaged or pending ones."""
    return [cell for cell in cells if cell_status(cell_folder(root, cell)) != "finished"]


def finished_cells(root: Path, cells: Sequence[Cell]) -> list[Cell]:
    return [cell for cell in cells if cell_status(cell_folder(root, cell)) == "finished"]


def cell_row(root: Path, cell: Cell) -> dict[str, Any]:
    """A cell's status, metrics and timings, as one summary row."""
    folder = cell_folder(root, cell)
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
    elif row["status"] == "damaged":
        row["error"] = cell_problem(folder)
    elif row["status"] == "failed":
        lines = (folder / CELL_ERROR_FILE).read_text(errors="replace").strip().splitlines()
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
    columns = distinct([*SUMMARY_HEAD, *(key for row in rows for key in row)])
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    try:
        with holding_root(root):
            write_owned(root, SUMMARY_JSON, json.dumps(payload, indent=2) + "\n")
            write_owned(root, SUMMARY_CSV, table.getvalue())
    except FolderError as error:
        raise GridError(f"runs folder: {error}") from None
    return rows
