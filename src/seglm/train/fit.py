"""Fitting: the model and its adapter, the Trainer, the weights at the run root, and
train_report.json."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglm.config import TrainConfig
from seglm.folders import file_stamps, record_files, written_since
from seglm.runs import TRAIN_LOG_FILE, TRAIN_REPORT_FILE, write_json
from seglm.train.callbacks import (
    checkpoint_owner_callback,
    console_progress_callback,
    jsonl_log_callback,
    run_progress_callback,
    whole_run,
)
from seglm.train.splits import PreparedData


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    final_weights: str  # "best" or "last": which weights sit at the run root
    best_checkpoint: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def fit(
    config: TrainConfig,
    objective: Any,
    tokenizer: Any,
    data: PreparedData,
    args: Any,
    resume_from: str | None,
    callbacks: Sequence[Any],
) -> TrainResult:
    import torch
    from transformers import set_seed

    from seglm.adapters import adapter_summary, add_adapter, load_base_model
    from seglm.data import DataCollator
    from seglm.fused_head import remove_fused_head
    from seglm.trainer import SegLMTrainer

    started = time.perf_counter()
    _reset_peak_rss()
    set_seed(config.seed)
    progress = run_progress_callback(started)
    model = add_adapter(load_base_model(config, args.local_process_index), config)
    trainer = SegLMTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=DataCollator(tokenizer.pad_token_id, padding_side="right"),
        processing_class=tokenizer,
        objective=objective,
        fused_loss=config.fused_loss,
        callbacks=[
            jsonl_log_callback(config.run_dir / TRAIN_LOG_FILE),
            checkpoint_owner_callback(config.run_dir),
            progress,
            *callbacks,
        ],
    )
    progress.trainer = trainer
    _show_progress_on_the_console(trainer, config)
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        # The callback is one of the trainer's: without breaking this cycle the model is freed
        # at the next garbage collection, not when this returns (a grid cell's evaluation loads
        # the model again, on the same GPU).
        progress.trainer = None
    remove_fused_head(model)
    before = file_stamps(config.run_dir)
    trainer.save_model(str(config.run_dir))
    trainer.save_state()
    if args.process_index == 0:  # the weights, tokenizer and state at the root are seglm's
        record_files(config.run_dir, *written_since(config.run_dir, before))
    state = trainer.state
    weights = "best" if args.load_best_model_at_end and state.best_model_checkpoint else "last"
    eval_losses = [e["eval_loss"] for e in state.log_history if "eval_loss" in e]
    whole = whole_run(progress.sessions(output), output, state)
    metrics = {
        "train_loss": whole["train_loss"],
        "train_steps_per_second": whole["steps_per_second"] or 0.0,
        **({"eval_loss": eval_losses[-1]} if eval_losses else {}),
        **({"best_eval_loss": state.best_metric} if state.best_metric is not None else {}),
    }
    report = {
        "data": data.report,
        "adapter": {"type": config.adapter, **adapter_summary(model)},
        "fused_loss": trainer.fused_head is not None,
        **(
            {"fused_loss_unavailable": trainer.fused_head_reason}
            if trainer.fused_head_reason
            else {}
        ),
        **({"reference": trainer.reference_report()} if objective.uses_reference else {}),
        "dtype": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "world_size": args.world_size,
        **distributed_setup(trainer),
        "global_step": state.global_step,
        "resumed_from": resume_from,
        "resumed_from_step": progress.resumed_step if resume_from else None,
        "final_weights": weights,
        "checkpoint_selection": checkpoint_selection(config, data, weights),
        "best_checkpoint": state.best_model_checkpoint,
        # The whole run: the sessions that led to the weights, their times summed.
        "wall_time_s": whole["wall_time_s"],
        "train_runtime_s": whole["train_runtime_s"],
        "steps_per_second": whole["steps_per_second"],
        "sessions": whole["sessions"],
        "peak_rss_mib": _peak_rss_mib(),
        **(
            {"peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
            if torch.cuda.is_available()
            else {}
        ),
        "metrics": metrics,
    }
    if args.process_index == 0:
        record_files(config.run_dir, TRAIN_REPORT_FILE)
        write_json(config.run_dir / TRAIN_REPORT_FILE, report)
    return TrainResult(
        run_dir=config.run_dir,
        global_step=state.global_step,
        final_weights=weights,
        best_checkpoint=state.best_model_checkpoint,
        metrics=metrics,
        report=report,
    )


def checkpoint_selection(config: TrainConfig, data: PreparedData, weights: str) -> dict[str, Any]:
    """What chose the weights at the run root (train_report.json)."""
    evaluated = data.report.get("eval")
    if weights != "best" or evaluated is None:
        if evaluated is None:
            reason = "no evaluation split"
        elif config.final_weights == "best":
            reason = "no checkpoint was evaluated"
        else:
            reason = "final_weights: last"
        return {"final_weights": weights, "by": f"the last step ({reason})"}
    return {
        "final_weights": "best",
        "by": "lowest eval_loss",
        "split": evaluated["split"],
        "holds": evaluated["holds"],
        "examples": evaluated["kept"],
    }


def distributed_setup(trainer: Any) -> dict[str, Any]:
    """How accelerate ran the processes (``distributed_type``: NO, MULTI_GPU, MULTI_CPU, FSDP,
    DEEPSPEED, ...) and, under FSDP, which version."""
    state = trainer.accelerator.state
    setup: dict[str, Any] = {"distributed_type": str(state.distributed_type.value)}
    plugin = getattr(state, "fsdp_plugin", None)
    if plugin is not None:
        setup["fsdp_version"] = plugin.fsdp_version
    return setup


def _show_progress_on_the_console(trainer: Any, config: TrainConfig) -> None:
    """One rich progress line in place of the Trainer's tqdm bar, or nothing when progress is
    off; the Trainer's printed log dicts never (the log is in log.jsonl)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    showing = not trainer.args.disable_tqdm
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if showing:
        title = f"training {config.run_name or config.run_dir.name}"
        trainer.add_callback(console_progress_callback(title))


def _reset_peak_rss() -> None:
    """Start the peak-RSS count afresh, so ``peak_rss_mib`` is this run's even when one process
    trains several runs (``seglm compare``). Linux only; elsewhere the process's peak is kept."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mib() -> float:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
