"""The run folder: refuse one that holds another run, find the checkpoint to resume from, and
prepare the folder (a fresh config.yaml, or what a resumed run writes again removed)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from seglm.checkpoints import checkpoints, last_complete_checkpoint
from seglm.config import ConfigError, TrainConfig, load_run_config, write_config
from seglm.folders import (
    TRAINER_FILES,
    FolderError,
    Manifest,
    claim,
    foreign_files,
    hold,
    ownership,
    record_files,
    remove_owned,
)
from seglm.json_lines import whole_lines
from seglm.runs import (
    CHECKPOINT_NAME,
    RUN_CONFIG_FILE,
    TRAIN_LOG_FILE,
    TRAIN_REPORT_FILE,
    differences,
    folder_problem,
    write_atomically,
)

logger = logging.getLogger(__name__)


RUN_ADVICE = "wait for it to finish (or stop it), or choose another --output-dir"


@contextlib.contextmanager
def holding_run_dir(config: TrainConfig) -> Iterator[None]:
    """The run folder held by this process (the main one of a multi-process launch) while it
    trains (:func:`seglm.folders.hold`): a second training into it is refused at once."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(hold(config.run_dir, "training run", RUN_ADVICE))
        except FolderError as error:
            raise ConfigError(f"output folder: {error}") from None
        yield


def check_run_dir(config: TrainConfig) -> str | None:
    """Refuse a folder that holds another run, or files of the user's that training would
    replace or delete; return the checkpoint to resume from."""
    run_dir = config.run_dir
    problem = folder_problem(run_dir)
    if problem:
        raise ConfigError(f"output folder: {problem}; choose a folder with --output-dir")
    try:
        owned = ownership(run_dir) if run_dir.is_dir() else Manifest()
    except FolderError as error:
        raise ConfigError(f"output folder: {error}") from None
    if owned is None:
        foreign = foreign_files(run_dir, Manifest())
        if foreign:
            raise ConfigError(
                f"output folder {run_dir} is not empty and holds no seglm run ({foreign[0]} is "
                "not seglm's); choose a new or empty folder"
            )
        owned = Manifest()
    has_run = owned.owns(RUN_CONFIG_FILE) and (run_dir / RUN_CONFIG_FILE).is_file()
    if has_run and (config.resume or config.overwrite):
        _check_trainer_names(run_dir, owned)
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
    if not has_run:
        if any(name for name in owned.files if (run_dir / name).exists()) or owned.folders:
            raise ConfigError(
                f"output folder {run_dir} holds seglm files but no seglm run (no config.yaml); "
                "choose a new or empty folder"
            )
        return None
    if config.overwrite:
        return None
    _check_same_run(config, run_dir, "")
    raise ConfigError(
        f"output folder {run_dir} already holds this run: pass --resume to continue it "
        "or --overwrite to start again"
    )


def _check_trainer_names(run_dir: Path, owned: Manifest) -> None:
    """A file of the user's where training writes (a checkpoint folder, which the Trainer
    deletes whole when it keeps fewer; a name the Trainer saves at the root) would be lost."""
    for entry in sorted(run_dir.iterdir()):
        written = TRAINER_FILES.match(entry.name) or CHECKPOINT_NAME.match(entry.name)
        if not written or owned.owns(entry.name):
            continue
        raise ConfigError(
            f"{entry} is not seglm's, and training would replace or delete it (the Trainer "
            "writes that name); move it out of the run folder"
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
    """Start the run folder (a fresh config.yaml; with ``overwrite``, seglm's files of the run
    before removed and the user's left in place), or prepare a resumed one (what the resumed run
    writes again removed)."""
    run_dir = config.run_dir
    if resume_from is None:
        claim(run_dir, "run folder")
        if config.overwrite:
            kept = remove_owned(run_dir)
            if kept:
                logger.info("overwrite: kept %d files of yours in %s", len(kept), run_dir)
        # How this invocation treated the folder is not part of the run.
        record_files(run_dir, RUN_CONFIG_FILE, TRAIN_LOG_FILE)
        write_config(replace(config, overwrite=False, resume=False), run_dir / RUN_CONFIG_FILE)
    else:
        step = _checkpoint_step(resume_from)
        _trim_log(run_dir / TRAIN_LOG_FILE, step)
        # What a save cut short left after the checkpoint: nothing in it can be resumed, and the
        # Trainer would count it among the checkpoints it keeps (save_total_limit).
        later = [f.name for f in checkpoints(run_dir) if _checkpoint_step(str(f)) > step]
        if later:
            logger.warning("resume: removing the incomplete %s", ", ".join(later))
            remove_owned(run_dir, later)


def _checkpoint_step(checkpoint: str) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[1])


def _trim_log(path: Path, last_step: int) -> None:
    """Drop the log events that the resumed run will write again, and lines that do not read
    (a write cut short)."""
    if not path.is_file():
        return
    kept = [event for event in whole_lines(path) if event.get("step", 0) <= last_step]
    write_atomically(path, "".join(json.dumps(event) + "\n" for event in kept))
