"""The folders seglm writes, in one place: the names of their files, atomic writes, and the
checks every writer shares. Training, evaluation, grids and the report depend on this module,
not on each other, for the layout.

    RUN/                 a training run (seglm train)
      config.yaml          the resolved TrainConfig (written first)
      log.jsonl            one line per logged step
      checkpoint-N/        the Trainer's checkpoints
      train_report.json    written last: its presence marks a finished run
    EVAL/                an evaluation (seglm eval; a run folder can be one too)
      eval_config.json     what was evaluated and how (checked on resume)
      predictions.jsonl    one line per example, appended as they are made
      metrics.json         written last: with whole predictions, it marks a finished one
    RUNS/                a grid (seglm compare)
      grid.json, summary.csv, summary.json, report.md, report.json, figures/
      {task}/{model}/{arm}/seed{s}/   a run folder and its evaluation (error.txt if it failed)

Each of these folders also holds ``.seglm-files.json`` (the files seglm wrote there) and
``.seglm.lock`` (held by the one process that writes it): :mod:`seglm.folders`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

RUN_CONFIG_FILE = "config.yaml"
TRAIN_LOG_FILE = "log.jsonl"
TRAIN_REPORT_FILE = "train_report.json"
EVAL_SETTINGS_FILE = "eval_config.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
ROSCOE_FILE = "roscoe.jsonl"  # per-example ROSCOE scores of a grid cell, one line per prediction
GRID_FILE = "grid.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
CELL_ERROR_FILE = "error.txt"
REPORT_MARKDOWN = "report.md"
REPORT_JSON = "report.json"
FIGURES_DIR = "figures"
CHECKPOINT_NAME = re.compile(r"^checkpoint-([0-9]+)$")
# The Trainer writes trainer_state.json after the weights, optimiser, scheduler and RNG states.
CHECKPOINT_STATE = "trainer_state.json"
# Weights as save_model leaves them: PEFT adapters, full models (sharded or not), FSDP shards.
CHECKPOINT_WEIGHTS = re.compile(r"^(adapter_model|model|pytorch_model)[.-]|^pytorch_model_fsdp_")


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a folder: it, or a folder above it, is a file."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                return None
            what = "is a file" if candidate == path else f"is inside {candidate}, a file"
            return f"{path} {what}, not a folder"
    return None


def differences(previous: Any, current: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for each value of ``current`` that ``previous`` does not have, nested
    mappings key by key (``train.learning_rate: 0.001 -> 0.0005``): what the "same run, or
    refuse" checks of run, evaluation and grid folders name."""
    if isinstance(previous, dict) and isinstance(current, dict):
        found = []
        for key in current:
            found += differences(previous.get(key), current[key], f"{prefix}{key}.")
        return found
    if previous != current:
        return [f"{prefix.rstrip('.')}: {previous!r} -> {current!r}"]
    return []


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it, even after a power cut (the
    staging file is synced before the rename); the process id keeps concurrent writers
    (sharded grids) off each other's staging file."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def write_json(path: Path, value: Any) -> None:
    write_atomically(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
