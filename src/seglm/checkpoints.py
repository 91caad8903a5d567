"""Whether a run's checkpoints and weight files read whole, so that a resume or an evaluation
never starts from a save a kill cut short: safetensors headers and sizes, PyTorch state loaded
with ``weights_only`` (nothing in a run folder may run code), JSON parsed.

Apart from :mod:`seglm.runs` because judging a PyTorch file loads torch, which the settings
(that name the run folder's files) must not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from seglm.runs import CHECKPOINT_NAME, CHECKPOINT_STATE, CHECKPOINT_WEIGHTS


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
