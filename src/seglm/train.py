"""``train(config) -> TrainResult``: fine-tune a causal LM on a task with a seglm objective.

It runs the transformers Trainer (through :class:`seglm.trainer.SegLMTrainer`), so accelerate,
DDP, FSDP and DeepSpeed work as users know them. Everything that can be checked cheaply (config,
loss spec, environment, run folder, task, model name, tokenised data) is checked before the model
is loaded. The run folder holds:

- ``config.yaml``: the resolved :class:`~seglm.config.TrainConfig`;
- ``checkpoint-<step>/`` while training (weights, optimiser, scheduler, RNG and trainer state);
- at the end, at the root: the weights (``adapter_model.safetensors`` for LoRA/QLoRA,
  ``model.safetensors`` for full fine-tuning) of the best checkpoint by validation loss when there
  is a validation split and ``final_weights: best``, else of the last step; the tokenizer;
  ``trainer_state.json``;
- ``log.jsonl``: one JSON object per log event (step, epoch, loss and each ``loss_<component>``,
  learning rate, gradient norm, validation loss);
- ``train_report.json``: what tokenisation kept, dropped and truncated, what chose the weights
  at the root (``checkpoint_selection``; never a task's test split), wall time, steps per
  second, peak memory, trainable parameters.

This module imports nothing heavy at import time, so experiments can import it cheaply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seglm.config import (
    AUTO,
    ConfigError,
    TrainConfig,
    load_run_config,
    missing_reporters,
    resolve_config,
    write_config,
)
from seglm.distributed import unlaunched_gpus_problem, visible_gpu_count
from seglm.runs import (
    RUN_CONFIG_FILE,
    TRAIN_LOG_FILE,
    TRAIN_REPORT_FILE,
    checkpoints,
    differences,
    folder_problem,
    last_complete_checkpoint,
    read_jsonl,
    write_json,
)

logger = logging.getLogger(__name__)

EVAL_SPLITS: tuple[str, ...] = ("validation", "dev", "val")


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    final_weights: str  # "best" or "last": which weights sit at the run root
    best_checkpoint: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] | None
    report: dict[str, Any]


def train(
    config: TrainConfig | dict[str, Any] | str | Path,
    *,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
) -> TrainResult:
    """Run one training run; ``config`` is a TrainConfig, a dict of fields or a YAML path.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects. Raises
    :class:`~seglm.config.ConfigError` for anything wrong with the setup (before the model is
    loaded) and :class:`~seglm.trainer.NonFiniteLossError` when a loss becomes NaN or infinite.
    """
    config = _as_config(config)
    objective = build_objective(config)
    check_environment(config)
    if problem := unlaunched_gpus_problem(visible_gpu_count(), os.environ):
        raise ConfigError(problem)
    resume_from = check_run_dir(config)
    check_task_name(config.task)
    check_model_name(config.model)
    tokenizer = load_checked_tokenizer(config)
    data = prepare_data(config, tokenizer)
    args = training_arguments(config, has_eval=data.eval is not None, progress=progress)
    with args.main_process_first(desc="prepare the run folder"):
        if args.process_index == 0:
            prepare_run_dir(config, resume_from)
    return _fit(config, objective, tokenizer, data, args, resume_from, callbacks)


def _as_config(config: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return resolve_config(overrides=config)
    return resolve_config(config)


def build_objective(config: TrainConfig) -> Any:
    """The config's :class:`~seglm.losses.Objective`: its loss spec, and each of the objective's
    options from the config field of the same name."""
    from seglm.losses import OBJECTIVE_OPTIONS, Objective

    options = {name: getattr(config, name) for name in OBJECTIVE_OPTIONS}
    try:
        return Objective.from_spec(config.loss, **options)
    except ValueError as error:
        raise ConfigError(f"objective: {error}") from None


def check_environment(config: TrainConfig) -> None:
    """Fail early on what this machine cannot do."""
    import torch

    from seglm.adapters import check_adapter_available

    check_adapter_available(config.adapter)
    if config.dtype == "fp16" and not torch.cuda.is_available():
        raise ConfigError(
            "dtype 'fp16' (autocast with loss scaling) needs a CUDA GPU; on CPU use "
            "--dtype bf16 or --dtype fp32"
        )
    missing = missing_reporters(config)
    if missing:
        raise ConfigError(
            f"report_to {', '.join(missing)}: install the package(s) first "
            f"(pip install {' '.join(missing)})"
        )
    problem = distributed_problem()
    if problem:
        raise ConfigError(problem)


# accelerate launch sets these from an accelerate config's distributed_type.
SHARDING_LAUNCHES: dict[str, str] = {
    "FSDP": "ACCELERATE_USE_FSDP",
    "DeepSpeed": "ACCELERATE_USE_DEEPSPEED",
}


def distributed_problem() -> str | None:
    """An FSDP or DeepSpeed launch on a machine without a GPU: accelerate (1.16) turns them on
    only for accelerator processes (``AcceleratorState`` sets FSDP for MULTI_GPU, MULTI_XPU, ...
    but not MULTI_CPU, and DeepSpeed only when not on the CPU), so the run would silently train
    with plain DDP, every process holding the whole model and optimiser state."""
    import os

    requested = [
        name
        for name, variable in SHARDING_LAUNCHES.items()
        if os.environ.get(variable, "false").lower() in ("1", "true")
    ]
    if not requested or _has_accelerator():
        return None
    import accelerate

    return (
        f"{requested[0]} was requested (accelerate launch with distributed_type "
        f"{requested[0].upper()}) on a machine without a GPU: accelerate "
        f"{accelerate.__version__} turns {requested[0]} on only for GPU (and other accelerator) "
        "processes and would train with plain DDP instead; on CPU use torchrun "
        "--nproc_per_node N -m seglm train (DDP over gloo), on GPUs "
        "configs/accelerate/fsdp.yaml (docs/training.md)"
    )


def check_task_name(name: str) -> None:
    from seglm.tasks import task_class

    try:
        task_class(name)
    except ValueError as error:
        raise ConfigError(f"field 'task': {error}") from None


def check_model_name(name: str) -> None:
    """Catch a missing folder or a typo of an alias before going to the hub."""
    from seglm.models import model_name_problem

    problem = model_name_problem(name)
    if problem:
        raise ConfigError(problem)


def load_checked_tokenizer(config: TrainConfig) -> Any:
    from seglm.models import load_tokenizer

    try:
        return load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    except OSError as error:
        raise ConfigError(f"model {config.model!r}: cannot load its tokenizer: {error}") from None


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
    path.write_text("".join(json.dumps(event) + "\n" for event in kept))


def prepare_data(config: TrainConfig, tokenizer: Any) -> PreparedData:
    """Load and tokenise the train and eval splits; fail if nothing is left to train on."""
    from seglm.data import tokenize_examples
    from seglm.tasks import get_task

    try:
        task = get_task(config.task, tokenizer=tokenizer, **config.task_options)
    except ValueError as error:
        raise ConfigError(f"task_options: {error}") from None
    eval_split = _eval_split(config, task.splits)
    check_selection_split(config, task, eval_split)
    max_length = config.max_length or task.default_max_length
    report: dict[str, Any] = {"max_length": max_length}
    features: dict[str, list[dict[str, Any]]] = {}
    for name, split, limit in (
        ("train", config.train_split, config.train_limit),
        ("eval", eval_split, config.eval_limit),
    ):
        if split is None:
            continue
        examples = _load_split(task, split, config, limit)
        tokenized = tokenize_examples(
            examples,
            tokenizer,
            max_length,
            # The prompt's labels are kept when some term averages over every supervised token.
            ce_scope=build_objective(config).label_scope,
            overflow=config.overflow,
        )
        if not tokenized.features:
            counts = tokenized.report
            raise ConfigError(
                f"task {config.task!r}, split {split!r}: every one of {len(examples)} examples "
                f"was dropped by tokenisation at max_length={max_length} (answer too long: "
                f"{counts['dropped_answer_too_long']}, prompt too long with overflow "
                f"{config.overflow!r}: {counts['dropped_prompt_too_long']}, prompt template too "
                f"long to fit by cutting its question: {counts['dropped_prompt_uncuttable']}); "
                "raise max_length"
            )
        features[name] = tokenized.features
        report[name] = {"split": split, "holds": task.describe_split(split), **tokenized.report}
    return PreparedData(features["train"], features.get("eval"), report)


def check_selection_split(config: TrainConfig, task: Any, eval_split: str | None) -> None:
    """Never choose the final weights on the data reported as test (SPEC 7.7)."""
    if eval_split is None or config.final_weights != "best" or "test" not in task.splits:
        return
    try:
        selects_on_test = task.resolve_split(eval_split) == task.resolve_split("test")
    except ValueError:
        return  # an unknown split fails with its own message when it is loaded
    if selects_on_test:
        raise ConfigError(
            f"eval_split {eval_split!r} is task {config.task!r}'s test data: keeping the best "
            "checkpoint on it would select on the test set; use a validation split, or "
            "final_weights: last to only watch the test loss"
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


def _eval_split(config: TrainConfig, splits: Sequence[str]) -> str | None:
    if config.eval_split != AUTO:
        return config.eval_split
    return next((s for s in EVAL_SPLITS if s in splits and s != config.train_split), None)


def _load_split(task: Any, split: str, config: TrainConfig, limit: int | None) -> list[Any]:
    try:
        examples = task.load(split, data_dir=config.data_dir, limit=limit)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"task {config.task!r}, split {split!r}: {error}") from None
    if not examples:
        raise ConfigError(f"task {config.task!r}, split {split!r} has no examples")
    return examples


def training_arguments(config: TrainConfig, has_eval: bool, progress: bool) -> Any:
    """The Trainer's arguments for this config (creating them sets up distributed state)."""
    from transformers import TrainingArguments

    from seglm.models import resolve_dtype

    dtype = resolve_dtype(config.dtype)
    eval_strategy = "no" if not has_eval else "steps" if config.eval_steps else "epoch"
    keep_best = has_eval and config.final_weights == "best"
    save_strategy, save_steps = _save_schedule(config, eval_strategy, keep_best)
    settings = dict(
        output_dir=str(config.run_dir),
        run_name=config.run_name,
        seed=config.seed,
        data_seed=config.seed,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size or config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.scheduler,
        optim=config.optim,
        max_grad_norm=config.max_grad_norm,
        bf16=dtype == "bf16",
        # Without it, bf16 autocast is refused and torchrun's processes do not form a group.
        use_cpu=not _has_accelerator(),
        fp16=dtype == "fp16",
        **_checkpointing_arguments(TrainingArguments, config.gradient_checkpointing),
        **_sampling_arguments(TrainingArguments, config.group_by_length),
        eval_strategy=eval_strategy,
        eval_steps=config.eval_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to=config.report_to or "none",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        prediction_loss_only=True,
        average_tokens_across_devices=True,
        dataloader_pin_memory=False,
    )
    try:
        return TrainingArguments(**settings)
    except ValueError as error:  # e.g. an unknown scheduler or optimiser name
        raise ConfigError(f"training arguments: {error}") from None


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator else torch.cuda.is_available()


def _checkpointing_arguments(arguments_class: type, enabled: bool) -> dict[str, Any]:
    """transformers 5 renamed gradient checkpointing to activation checkpointing."""
    renamed = "activation_checkpointing" in getattr(arguments_class, "__dataclass_fields__", {})
    name = "activation_checkpointing" if renamed else "gradient_checkpointing"
    # Non-reentrant checkpointing needs no input gradients, so frozen embeddings (LoRA) work.
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


def _sampling_arguments(arguments_class: type, group_by_length: bool) -> dict[str, Any]:
    """transformers 5 replaced the group_by_length flag by train_sampling_strategy."""
    if "train_sampling_strategy" in getattr(arguments_class, "__dataclass_fields__", {}):
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def _save_schedule(config: TrainConfig, eval_strategy: str, keep_best: bool) -> tuple[str, Any]:
    """Checkpoints at evaluations by default; keeping the best needs them to coincide."""
    if config.save_steps is None:
        if eval_strategy == "steps":
            return "steps", config.eval_steps
        return "epoch", None
    if keep_best and (eval_strategy != "steps" or config.save_steps % config.eval_steps):
        raise ConfigError(
            f"save_steps={config.save_steps} must be a multiple of eval_steps "
            f"({config.eval_steps}) to keep the best checkpoint; set eval_steps, or "
            "final_weights: last"
        )
    return "steps", config.save_steps


def _fit(
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
        callbacks=[jsonl_log_callback(config.run_dir / TRAIN_LOG_FILE), progress, *callbacks],
    )
    progress.trainer = trainer
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        # The callback is one of the trainer's: without this cycle the model is freed when
        # this returns, not at the next garbage collection (a grid cell's evaluation loads
        # the model again, on the same GPU).
        progress.trainer = None
    remove_fused_head(model)
    trainer.save_model(str(config.run_dir))
    trainer.save_state()
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
        write_json(config.run_dir / TRAIN_REPORT_FILE, report)
    return TrainResult(
        run_dir=config.run_dir,
        global_step=state.global_step,
        final_weights=weights,
        best_checkpoint=state.best_model_checkpoint,
        metrics=metrics,
        report=report,
    )


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


def distributed_setup(trainer: Any) -> dict[str, Any]:
    """How accelerate ran the processes (``distributed_type``: NO, MULTI_GPU, MULTI_CPU, FSDP,
    DEEPSPEED, ...) and, under FSDP, which version."""
    state = trainer.accelerator.state
    setup: dict[str, Any] = {"distributed_type": str(state.distributed_type.value)}
    plugin = getattr(state, "fsdp_plugin", None)
    if plugin is not None:
        setup["fsdp_version"] = plugin.fsdp_version
    return setup


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
