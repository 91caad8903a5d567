"""The run folder: refuse one that holds another run, find the checkpoint to resume from, and
prepare the folder (a fresh config.yaml, or what a resumed run writes again removed)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

from seglm.config import ConfigError, TrainConfig, load_run_config, write_config
from seglm.json_lines import read_jsonl
from seglm.runs import (
    RUN_CONFIG_FILE,
    TRAIN_LOG_FILE,
    TRAIN_REPORT_FILE,
    checkpoints,
    differences,
    folder_problem,
    last_complete_checkpoint,
    write_atomically,
)

logger = logging.getLogger(__name__)


def check_run_dir(config: TrainConfig) -> str | None:
    """Refuse a folder that holds another run; return the checkpoint to resume from."""
    run_dir = config.run_dir
    problem = folder_problem(run_dir)
    if problem:
        raise ConfigError(f"output folder: {problem}; choose a folder with --output-dir")
    has_run = (run_dir / RUN_CONFIG_FILE).is_file()
    if config.resume:
        if not has_run:
            raise ConfigError(f"resume: {run_dir} holds no run (no config.yaml)")
        _check_same_run(config, run_dir, "resume: ")
        if (run_dir / TRAIN_REPORT_FILE).is_file():
            raise ConfigError(
                f"resume: the run in {run_dir} has finished ({TRAIN_REPORT_FILE} is there); "
                "nothing to resume (--overwrite trains it again)"
            )
        checkpoint, skipped = last_complete_checkpoint(run_dir)
        if checkpoint is None:
            incomplete = f" (incomplete, cut short while saving: {', '.join(skipped)})"
            raise ConfigError(
                f"resume: {run_dir} has no complete checkpoint yet{incomplete if skipped else ''}"
                "; start again with --overwrite"
            )
        if skipped:
            logger.warning(
                "resume: skipped %s in %s: incomplete, cut short while saving; resuming from %s",
                ", ".join(skipped),
                run_dir,
                Path(checkpoint).name,
            )
        return checkpoint
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    if not has_run:
        raise ConfigError(
            f"output folder {run_dir} is not empty and holds no seglm run; "
            "choose a new or empty folder"
        )
    if config.overwrite:
        return None
    _check_same_run(config, run_dir, "")
    raise ConfigError(
        f"output folder {run_dir} already holds this run: pass --resume to continue it "
        "or --overwrite to start again"
    )


def _check_same_run(config: TrainConfig, run_dir: Path, prefix: str) -> None:
    changed = differences(load_run_config(run_dir).identity(), config.identity())
    if changed:
        details = "; ".join(changed)
        raise ConfigError(
            f"{prefix}output folder {run_dir} holds a different run ({details}); "
            "pass --overwrite to replace it or choose another --output-dir"
        )


def prepare_run_dir(config: TrainConfig, resume_from: str | None) -> None:
    run_dir = config.run_dir
    if resume_from is None:
        if config.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # How this invocation treated the folder is not part of the run.
        write_config(replace(config, overwrite=False, resume=False), run_dir / RUN_CONFIG_FILE)
    else:
        step = _checkpoint_step(resume_from)
        _trim_log(run_dir / TRAIN_LOG_FILE, step)
        # What a save cut short left after the checkpoint: nothing in it can be resumed, and the
        # Trainer would count it among the checkpoints it keeps (save_total_limit).
        for folder in checkpoints(run_dir):
            if _checkpoint_step(str(folder)) > step:
                logger.warning("resume: removing the incomplete %s", folder)
                shutil.rmtree(folder)


def _checkpoint_step(checkpoint: str) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[1])


def _trim_log(path: Path, last_step: int) -> None:
    """Drop the log events that the resumed run will write again."""
    if not path.is_file():
        return
    kept = [event for event in read_jsonl(path) if event["step"] <= last_step]
    write_atomically(path, "".join(json.dumps(event) + "\n" for event in kept))
