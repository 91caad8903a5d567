"""The Trainer callbacks of a run: the sessions that led to a checkpoint (for a resumed run's
report), and the JSON Lines log; the report's totals over a run's sessions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

PROGRESS_CALLBACK = "RunProgress"  # its key in trainer_state.json's stateful_callbacks


def run_progress_callback(started: float) -> Any:
    """A TrainerCallback that keeps, in every checkpoint's trainer_state.json (written with it,
    so never out of step with it), the training sessions that led to that checkpoint: their
    steps, wall and training time, and mean loss. A resumed run reads them back from the
    checkpoint it resumes from, so its report covers the whole run (``started``: when this
    session's wall clock started)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class RunProgress(TrainerCallback, ExportableState):
        def __init__(self) -> None:
            self.trainer: Any = None
            self.earlier: list[dict[str, Any]] = []
            self.resumed_step = 0
            self.train_started: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.train_started = time.perf_counter()
            self.resumed_step = state.global_step
            saved = state.stateful_callbacks.get(PROGRESS_CALLBACK)
            if state.global_step and isinstance(saved, dict):
                self.earlier = list(saved.get("attributes", {}).get("sessions", []))
            # A checkpoint saved before this callback existed has no entry for it; the Trainer
            # expects one for every stateful callback.
            state.stateful_callbacks[PROGRESS_CALLBACK] = self.state()

        def current(self, step: int, train_loss: float | None, runtime: float | None) -> dict:
            now = time.perf_counter()
            return {
                "steps": [self.resumed_step, step],
                "wall_time_s": round(now - started, 3),
                "train_runtime_s": round(
                    runtime if runtime is not None else now - (self.train_started or now), 3
                ),
                "train_loss": train_loss,
            }

        def _loss_so_far(self) -> float | None:
            """This session's mean loss per step so far, as the Trainer computes it at the end
            (logged sums plus the part not logged yet); None if this transformers hides it."""
            total = getattr(self.trainer, "_total_loss_scalar", None)
            pending = getattr(self.trainer, "_tr_loss", None)
            steps = self.trainer.state.global_step - self.resumed_step
            if total is None or pending is None or steps <= 0:
                return None
            return (total + float(pending)) / steps

        def state(self) -> dict[str, Any]:
            if self.trainer is None or self.train_started is None:
                return {"args": {}, "attributes": {"sessions": list(self.earlier)}}
            session = self.current(self.trainer.state.global_step, self._loss_so_far(), None)
            return {"args": {}, "attributes": {"sessions": [*self.earlier, session]}}

        def sessions(self, output: Any) -> list[dict[str, Any]]:
            """Every session of the run, this one (just ended with ``output``) last."""
            runtime = output.metrics.get("train_runtime")
            return [*self.earlier, self.current(output.global_step, output.training_loss, runtime)]

    return RunProgress()


def whole_run(sessions: list[dict[str, Any]], output: Any, state: Any) -> dict[str, Any]:
    """The report's totals over the sessions of a run: times summed, the mean loss per step
    over all steps (as the Trainer reports it for a run that was never interrupted)."""
    if len(sessions) == 1:
        return {
            "sessions": sessions,
            "train_loss": output.training_loss,
            "wall_time_s": sessions[0]["wall_time_s"],
            "train_runtime_s": output.metrics.get("train_runtime"),
            "steps_per_second": output.metrics.get("train_steps_per_second"),
        }
    steps = [b - a for a, b in (session["steps"] for session in sessions)]
    losses = [session["train_loss"] for session in sessions]
    if all(loss is not None for loss in losses) and sum(steps):
        train_loss = sum(loss * n for loss, n in zip(losses, steps, strict=True)) / sum(steps)
    else:
        train_loss = logged_train_loss(state.log_history, output.training_loss)
    runtime = sum(session["train_runtime_s"] for session in sessions)
    return {
        "sessions": sessions,
        "train_loss": train_loss,
        "wall_time_s": round(sum(session["wall_time_s"] for session in sessions), 3),
        "train_runtime_s": round(runtime, 3),
        "steps_per_second": round(sum(steps) / runtime, 3) if runtime > 0 else None,
    }


def logged_train_loss(log_history: list[dict[str, Any]], fallback: float) -> float:
    """The mean loss per step from the logged interval means (each weighted by its steps)."""
    total = steps = 0.0
    previous = 0
    for event in log_history:
        if "loss" in event and "step" in event and event["step"] > previous:
            total += event["loss"] * (event["step"] - previous)
            steps += event["step"] - previous
            previous = event["step"]
    return total / steps if steps else fallback


def jsonl_log_callback(path: Path) -> Any:
    """A TrainerCallback appending every log event as one JSON line:
    ``{"step": ..., "epoch": ..., **logs}`` (main process only)."""
    from transformers import TrainerCallback

    class JsonlLogCallback(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            event = {"step": state.global_step, "epoch": state.epoch, **logs}
            with path.open("a") as handle:
                handle.write(json.dumps(event) + "\n")

    return JsonlLogCallback()


def console_progress_callback(title: str) -> Any:
    """A TrainerCallback that shows training as one rich progress line on stderr (main process
    only): the step, the last logged loss and each of its terms, the time left. It stands in for
    the Trainer's tqdm bar and printed log dicts."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class ConsoleProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Progress | None = None
            self.task: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if not state.is_world_process_zero:
                return
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[losses]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.bar.start()
            self.task = self.bar.add_task(
                title, total=state.max_steps, completed=state.global_step, losses=""
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            summary = loss_summary(logs or {})
            if self.bar is not None and summary:  # the end-of-training totals have no loss
                self.bar.update(self.task, losses=summary)

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return ConsoleProgress()


def loss_summary(logs: dict[str, Any]) -> str:
    """``loss 1.234 (ce 1.4, lovasz 0.91)``, plus ``eval 1.3`` when validated: a log event."""
    parts = []
    if "loss" in logs:
        terms = [
            f"{key.removeprefix('loss_')} {value:.3g}"
            for key, value in logs.items()
            if key.startswith("loss_") and isinstance(value, int | float)
        ]
        parts.append(f"loss {logs['loss']:.4g}" + (f" ({', '.join(terms)})" if terms else ""))
    if "eval_loss" in logs:
        parts.append(f"eval {logs['eval_loss']:.4g}")
    return "  ".join(parts)


def checkpoint_owner_callback(run_dir: Path) -> Any:
    """A TrainerCallback that records each checkpoint folder as seglm's (seglm.folders) before
    the Trainer saves it, so that a save cut short leaves a folder seglm may delete (main
    process only)."""
    from transformers import TrainerCallback

    from seglm.folders import record_files

    def claim_next_save(args: Any, state: Any, control: Any) -> None:
        if control.should_save and state.is_world_process_zero:
            record_files(run_dir, folders=[f"checkpoint-{state.global_step}"])

    class CheckpointOwner(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            claim_next_save(args, state, control)

        def on_epoch_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            claim_next_save(args, state, control)

    return CheckpointOwner()
