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


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` (``checkpoint-N``) cannot be resumed from (a save cut short, a file
    damaged), or None: its trainer_state.json is at its step, it has weights, and every file the
    Trainer loads on resume reads whole (:func:`file_problem`)."""
    state_file = folder / CHECKPOINT_STATE
    if not state_file.is_file():
        return f"no {CHECKPOINT_STATE}"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as error:
        return f"{CHECKPOINT_STATE} is not readable JSON ({error})"
    step = int(CHECKPOINT_NAME.match(folder.name).group(1))  # type: ignore[union-attr]
    if not isinstance(state, dict) or state.get("global_step") != step:
        found = state.get("global_step") if isinstance(state, dict) else None
        return f"{CHECKPOINT_STATE} is at step {found!r}, not {step}"
    weights = [p for p in folder.iterdir() if CHECKPOINT_WEIGHTS.match(p.name)]
    if not any(p.is_dir() or p.stat().st_size > 0 for p in weights):
        return "no weights"
    for path in sorted(folder.iterdir()):
        problem = file_problem(path) if path.is_file() else None
        if problem:
            return f"{path.name} {problem}"
    return None


# What the Trainer loads when it resumes (training_args.bin, a pickle it never loads, is not).
TORCH_STATE = re.compile(r"^(optimizer|scheduler|scaler|rng_state.*)\.(pt|pth)$|\.bin$")


def file_problem(path: Path) -> str | None:
    """Why a file of weights or state does not read whole, or None: a safetensors file whose
    header or size is cut short, a PyTorch file that does not load as plain tensors
    (``weights_only``: nothing in it may run code), a JSON file that does not parse. Other files
    are not read."""
    name = path.name
    if name.endswith(".safetensors"):
        return _safetensors_problem(path)
    if TORCH_STATE.search(name) and name != "training_args.bin":
        return _torch_file_problem(path)
    if name.endswith(".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return f"is not readable JSON ({error})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else size
        if length > size - 8:
            return f"is cut short ({size} bytes: not even its header)"
        try:
            header = json.loads(handle.read(length))
            end = max(
                (item["data_offsets"][1] for key, item in header.items() if key != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "has a damaged header (not safetensors)"
    if 8 + length + end != size:
        return f"is cut short or damaged ({size} bytes; its header describes {8 + length + end})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    import torch
    from transformers.trainer_pt_utils import safe_globals

    if path.stat().st_size == 0:
        return "is empty"
    try:
        with safe_globals():  # the numpy types of a saved RNG state, as the Trainer allows them
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many kinds for a damaged or unsafe file
        text = str(error).strip() or type(error).__name__
        return f"does not load as tensors with weights_only ({_first(text)})"
    return None


def _first(text: str) -> str:
    """The first sentence of a library's message (PyTorch's run to a page)."""
    return text.splitlines()[0].split(". ")[0].rstrip(".")


def checkpoints(run_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of a run, newest step first."""
    found = [p for p in run_dir.glob("checkpoint-*") if CHECKPOINT_NAME.match(p.name)]
    return sorted(
        (p for p in found if p.is_dir()),
        key=lambda p: int(p.name.rsplit("-", 1)[1]),
        reverse=True,
    )


def last_complete_checkpoint(run_dir: Path) -> tuple[str | None, list[str]]:
    """The newest checkpoint written to the end, and what was skipped for it: the checkpoints
    after it, each with why (a process killed while saving leaves one incomplete)."""
    skipped = []
    for folder in checkpoints(run_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder), skipped
        skipped.append(f"{folder.name} ({problem})")
    return None, skipped
