"""The Trainer's arguments: ``transformers.TrainingArguments`` from the training config (with
shims for the names transformers 5 changed), and the config's ``trainer_args`` for any other
field. A field that seglm sets itself cannot be set through ``trainer_args``: the config's own
field sets it (docs/training.md lists them)."""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from seglm.config import ConfigError, TrainConfig
from seglm.schema import closest, schema_type, validate
from seglm.train.checks import has_accelerator

# The names transformers 5 changed (see the shims below): the old and the new one are seglm's.
SHIMMED: tuple[str, ...] = (
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "activation_checkpointing",
    "activation_checkpointing_kwargs",
    "group_by_length",
    "train_sampling_strategy",
)


def training_arguments(config: TrainConfig, has_eval: bool, progress: bool) -> Any:
    """The Trainer's arguments for this config, ``trainer_args`` included (creating them sets
    up distributed state)."""
    from transformers import TrainingArguments

    settings = {**seglm_arguments(config, has_eval, progress), **trainer_arguments(config)}
    try:
        return TrainingArguments(**settings)
    except ValueError as error:  # e.g. an unknown scheduler or optimiser name
        raise ConfigError(f"training arguments: {error}") from None


def check_trainer_args(config: TrainConfig) -> None:
    """Refuse a ``trainer_args`` name that TrainingArguments does not have or that seglm sets,
    and a value of the wrong type, before anything loads."""
    trainer_arguments(config)


def trainer_arguments(config: TrainConfig) -> dict[str, Any]:
    """The config's ``trainer_args``, each value as its TrainingArguments field's type (a YAML
    ``1e-8`` is text until then)."""
    if not config.trainer_args:
        return {}
    import transformers

    adapters = _field_adapters()
    ours = {*seglm_arguments(config, has_eval=False, progress=False), *SHIMMED}
    values = {}
    for name, value in config.trainer_args.items():
        if name not in adapters:
            raise ConfigError(
                f"trainer_args: {name!r} is not a field of TrainingArguments (transformers "
                f"{transformers.__version__}){closest(name, list(adapters))}"
            )
        if name in ours:
            raise ConfigError(
                f"trainer_args: seglm sets {name!r} itself, from the training config's fields "
                "(docs/training.md lists which field sets it); set that field instead"
            )
        adapter = adapters[name]
        values[name] = value if adapter is None else validate(adapter, value, name, "trainer_args")
    return values


@functools.cache
def _field_adapters() -> dict[str, Any]:
    """Each TrainingArguments field by name, with a validator for those of a plain type (a
    number, text, true or false; None for the others, whose values go through as they are)."""
    from pydantic import TypeAdapter
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    adapters: dict[str, Any] = {}
    for item in dataclasses.fields(TrainingArguments):
        if not item.init:
            continue
        hint = hints.get(item.name)
        kinds = [kind for kind in typing.get_args(hint) or (hint,) if kind is not type(None)]
        plain = len(kinds) == 1 and kinds[0] in (int, float, str, bool)
        adapters[item.name] = TypeAdapter(schema_type(hint)) if plain else None
    return adapters


def seglm_arguments(config: TrainConfig, has_eval: bool, progress: bool) -> dict[str, Any]:
    """What seglm sets in TrainingArguments, from the config's fields and for its own needs."""
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
        use_cpu=not has_accelerator(),
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
    return settings


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
