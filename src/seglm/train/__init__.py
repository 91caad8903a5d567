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

The package's modules, in the order ``train`` runs them: ``checks`` (the objective, the machine,
names, the tokenizer), ``run_folder`` (another run's folder refused, a resumed one prepared),
``splits`` (the data), ``arguments`` (``TrainingArguments``), ``fit`` (the Trainer, the report)
with its ``callbacks``. Nothing heavy is imported at import time, so experiments can import it
cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seglm.config import ConfigError, TrainConfig, resolve_config
from seglm.train.arguments import check_trainer_args, training_arguments
from seglm.train.callbacks import (
    PROGRESS_CALLBACK,
    jsonl_log_callback,
    logged_train_loss,
    run_progress_callback,
    whole_run,
)
from seglm.train.checks import (
    SHARDING_LAUNCHES,
    build_objective,
    check_environment,
    check_model_name,
    check_selection_split,
    check_task_name,
    distributed_problem,
    load_checked_tokenizer,
    remote_code_refused,
)
from seglm.train.fit import TrainResult, checkpoint_selection, fit
from seglm.train.run_folder import check_run_dir, holding_run_dir, prepare_run_dir
from seglm.train.splits import EVAL_SPLITS, PreparedData, prepare_data


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
    check_trainer_args(config)
    check_run_dir(config)  # refused before anything is written, or the folder made
    with holding_run_dir(config):
        resume_from = check_run_dir(config)  # again, now that no other process writes it
        check_task_name(config.task)
        check_model_name(config.model)
        tokenizer = load_checked_tokenizer(config)
        data = prepare_data(config, tokenizer)
        args = training_arguments(config, has_eval=data.eval is not None, progress=progress)
        with args.main_process_first(desc="prepare the run folder"):
            if args.process_index == 0:
                prepare_run_dir(config, resume_from)
        try:
            return fit(config, objective, tokenizer, data, args, resume_from, callbacks)
        except ValueError as error:  # transformers refusing a model's custom code
            if "trust_remote_code" not in str(error) or config.trust_remote_code:
                raise
            raise ConfigError(remote_code_refused(config.model)) from None
        except RuntimeError as error:  # torch.OutOfMemoryError, or the CPU allocator's
            if not any(text in str(error) for text in ("out of memory", "can't allocate memory")):
                raise
            raise ConfigError(
                f"out of memory while training ({str(error).splitlines()[0][:200]}); lower "
                "batch_size (raise grad_accum to keep the batch), max_length or lora_r, or turn "
                "on gradient_checkpointing"
            ) from None


def _as_config(config: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return resolve_config(overrides=config)
    return resolve_config(config)


__all__ = [
    "EVAL_SPLITS",
    "PROGRESS_CALLBACK",
    "SHARDING_LAUNCHES",
    "PreparedData",
    "TrainResult",
    "build_objective",
    "check_environment",
    "check_model_name",
    "check_run_dir",
    "check_selection_split",
    "check_task_name",
    "check_trainer_args",
    "checkpoint_selection",
    "distributed_problem",
    "jsonl_log_callback",
    "load_checked_tokenizer",
    "logged_train_loss",
    "prepare_data",
    "prepare_run_dir",
    "run_progress_callback",
    "train",
    "training_arguments",
    "whole_run",
]
