"""The settings of seglm's two entry points, each one dataclass that YAML files, grid files,
CLI flags and keyword arguments share: :class:`TrainConfig` (``seglm train``, a grid's ``train:``)
and :class:`EvalConfig` (``seglm eval``, a grid's ``eval:``). Each field's type comes from
:mod:`seglm.schema`, which checks it; the CLI builds each command's flags from the fields.

A training config's precedence, lowest first: the dataclass defaults, a preset
(``preset: paper-gsm8k``, a YAML file packaged in ``seglm/configs``), the user's YAML file, then
command-line flags. Unknown keys are errors with a "did you mean" suggestion. This module is cheap
to import (no torch, no transformers): the CLI builds its flags from it at start-up.
"""

import copy
import dataclasses
import difflib
import importlib.resources
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, PlainValidator

from seglm.losses.registry import LossTerm, Option, option_fields
from seglm.losses.spec import CE_SCOPES, GROUPS, LossSpec, option_type
from seglm.metrics.exact_match import ANSWER_MATCHES
from seglm.metrics.roscoe_names import FAMILIES as ROSCOE_FAMILIES
from seglm.runs import RUN_CONFIG_FILE, write_atomically
from seglm.schema import (
    ConfigError,
    Count,
    Integer,
    Name,
    NonEmptyText,
    NonNegative,
    NonNegativeInteger,
    Options,
    OptionText,
    Positive,
    Probability,
    Seed,
    TaskOptions,
    Text,
    TextList,
    check_fields,
    check_keys,
    choice,
    choices,
    field_adapters,
    optional,
    parse_yaml,
    read_yaml_text,
    validate,
)

ADAPTERS: tuple[str, ...] = ("lora", "qlora", "full")
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16", "auto")
OVERFLOWS: tuple[str, ...] = ("truncate_prompt", "drop")
FINAL_WEIGHTS: tuple[str, ...] = ("best", "last")
# report_to name -> the package it needs
REPORTERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# Fields that change how a run is computed or stored but not its result (a resumed run may differ).
RUNTIME_FIELDS: frozenset[str] = frozenset(
    {"overwrite", "resume", "output_dir", "report_to", "fused_loss"}
)
AUTO = "auto"
SCORINGS: tuple[str, ...] = ("generate", "loglik", "both")
LM_EVAL_FEWSHOT_SEED = 1234  # lm-evaluation-harness's default few-shot seed


def _loss_spec(value: Any) -> LossSpec:
    try:
        return LossSpec.parse(value)
    except ValueError as error:
        raise ConfigError(str(error)) from None


# A loss spec, parsed when the setting is read (seglm.losses.spec).
LossSpecText = Annotated[LossSpec, PlainValidator(_loss_spec)]


def _help(text: str, *flags: str) -> dict[str, Any]:
    """A field's help text and, where they are not ``--field-name``, its command-line flags."""
    return {"help": text, "flags": flags} if flags else {"help": text}


@dataclass
class _TrainSettings:
    """The fields of :class:`TrainConfig` other than the losses' options."""

    # model
    model: NonEmptyText = field(
        default="smollm2-135m-instruct",
        metadata=_help("hub id, local folder, or the offline alias smollm2-135m-instruct"),
    )
    trust_remote_code: bool = field(default=False, metadata=_help("allow custom model code"))
    # data
    task: Name = field(default="arith", metadata=_help("task name (seglm.tasks)"))
    task_options: TaskOptions = field(
        default_factory=dict, metadata=_help("task options, key=value (repeatable)")
    )
    data_dir: optional(Text) = field(default=None, metadata=_help("folder with the task's files"))
    train_split: Name = field(default="train", metadata=_help("split to train on"))
    eval_split: optional(Name) = field(
        default=AUTO,
        metadata=_help("validation split: auto (validation/dev if the task has one) or none"),
    )
    train_limit: optional(Count) = field(
        default=None, metadata=_help("use at most N train examples")
    )
    eval_limit: optional(Count) = field(default=None, metadata=_help("use at most N eval examples"))
    max_length: optional(Annotated[Integer, Field(ge=2)]) = field(
        default=None, metadata=_help("max tokens per example, at least 2 (default: the task's)")
    )
    overflow: choice(OVERFLOWS) = field(
        default="truncate_prompt",
        metadata=_help("too-long examples: truncate_prompt (never the answer) or drop"),
    )
    # objective (each loss's options follow the other fields: LOSS_OPTION_FIELDS)
    loss: LossSpecText = field(
        default=LossSpec.parse("ce=0.6,lovasz=0.4"),
        metadata=_help('loss spec, e.g. "ce=0.6,lovasz=0.4" (seglm losses lists the losses)'),
    )
    ce_scope: choice(CE_SCOPES) = field(
        default="all", metadata=_help("CE over all supervised tokens or answer")
    )
    group: choice(GROUPS) = field(
        default="sequence", metadata=_help("set-loss grouping: sequence (per example) or batch")
    )
    # adapter
    adapter: choice(ADAPTERS) = field(
        default="lora", metadata=_help("lora, qlora (GPU + bitsandbytes) or full")
    )
    lora_r: Count = field(default=8, metadata=_help("LoRA rank"))
    lora_alpha: Positive = field(default=16.0, metadata=_help("LoRA alpha"))
    lora_dropout: Probability = field(default=0.05, metadata=_help("LoRA dropout"))
    target_modules: optional(TextList) = field(
        default=None,
        metadata=_help("LoRA target modules, comma-separated (default: every linear layer)"),
    )
    # optimisation
    epochs: Positive = field(default=1.0, metadata=_help("training epochs"))
    max_steps: optional(Count) = field(
        default=None, metadata=_help("optimiser steps (overrides epochs)")
    )
    learning_rate: NonNegative = field(default=1e-4, metadata=_help("peak learning rate"))
    batch_size: Count = field(default=4, metadata=_help("examples per device per micro-batch"))
    eval_batch_size: optional(Count) = field(
        default=None, metadata=_help("eval batch size (default: batch_size)")
    )
    grad_accum: Count = field(default=1, metadata=_help("gradient accumulation steps"))
    warmup_steps: NonNegativeInteger = field(
        default=0, metadata=_help("learning-rate warm-up steps")
    )
    weight_decay: NonNegative = field(default=0.0, metadata=_help("AdamW weight decay"))
    scheduler: Text = field(default="linear", metadata=_help("learning-rate schedule"))
    optim: Text = field(default="adamw_torch", metadata=_help("optimiser (transformers name)"))
    max_grad_norm: NonNegative = field(default=1.0, metadata=_help("gradient clipping; 0 disables"))
    seed: Seed = field(default=42, metadata=_help("seed for init, dropout and data order"))
    group_by_length: bool = field(
        default=False,
        metadata=_help("batch examples of similar length (less padding; random batch order)"),
    )
    dtype: choice(DTYPES) = field(
        default="fp32",
        metadata=_help("fp32, bf16/fp16 autocast, or auto: bf16 where the hardware has it"),
    )
    fused_loss: optional(bool) = field(
        default=None,
        metadata=_help(
            "loss from hidden states in chunks, never all logits (default: when the model allows)"
        ),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute activations in backward")
    )
    trainer_args: Options = field(
        default_factory=dict,
        metadata=_help(
            "any other transformers TrainingArguments field, key=value (repeatable), e.g. "
            "dataloader_num_workers=2"
        ),
    )
    # evaluation, checkpoints, logs
    eval_steps: optional(Count) = field(
        default=None, metadata=_help("validation loss every N steps (default: each epoch)")
    )
    save_steps: optional(Count) = field(
        default=None, metadata=_help("checkpoint every N steps (default: at each evaluation)")
    )
    save_total_limit: optional(Count) = field(
        default=2, metadata=_help("checkpoints kept (the best one is always kept)")
    )
    logging_steps: Count = field(default=10, metadata=_help("log losses every N steps"))
    final_weights: choice(FINAL_WEIGHTS) = field(
        default="best", metadata=_help("weights at the run root: best (by eval loss) or last")
    )
    report_to: choices(tuple(REPORTERS)) = field(
        default_factory=list, metadata=_help("tensorboard, wandb, mlflow (comma-separated)")
    )
    # run
    output_dir: optional(Text) = field(
        default=None, metadata=_help("run folder (default: runs/<task>-<model>-<loss>-seed<seed>)")
    )
    run_name: optional(Text) = field(default=None, metadata=_help("run name for trackers"))
    preset: optional(Text) = field(
        default=None, metadata=_help("packaged preset, e.g. paper-gsm8k")
    )
    overwrite: bool = field(
        default=False,
        metadata=_help(
            "start again in output_dir: seglm's files of the run there are deleted, files of "
            "yours stay (docs/folders.md)"
        ),
    )
    resume: bool = field(
        default=False, metadata=_help("continue the run in output_dir from its last checkpoint")
    )

    def __post_init__(self) -> None:
        # Each field as its declared type (the values of YAML, flags and keyword arguments).
        check_fields(self)
        self.task_options = typed_task_options(self.task, self.task_options)
        if self.overwrite and self.resume:
            raise ConfigError("overwrite and resume exclude each other: pick one")

    @property
    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        loss = re.sub(r"[^a-z0-9.]+", "-", str(self.loss).lower()).strip("-")
        model = Path(self.model).name.lower()
        return Path("runs") / f"{self.task}-{model}-{loss}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain YAML/JSON values (the loss spec as its text)."""
        return {
            item.name: _plain(copy.deepcopy(getattr(self, item.name)))
            for item in dataclasses.fields(self)
        }

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (what a resumed run must share with the first). The
        options of losses the spec does not use, and an empty ``trainer_args``, are left out, so
        that fields added since (a new loss's options) leave the identity of earlier runs, and
        of the grids that hold them, unchanged."""
        used = {term.name for term in self.loss.losses}
        unused = {
            key
            for key, (term, _, option) in LOSS_OPTION_FIELDS.items()
            if term.name not in used and getattr(self, key) == option.default
        }
        if not self.trainer_args:
            unused.add("trainer_args")
        return {
            key: value
            for key, value in self.to_dict().items()
            if key not in RUNTIME_FIELDS and key not in unused
        }


def typed_task_options(task: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """Task options given as ``key=value`` text, each read by its declared type in the task
    (an unknown task or option is left as text: it is refused, named, when the task is built)."""
    if not any(isinstance(value, OptionText) for value in options.values()):
        return options
    from seglm.tasks import convert_option, option_types, task_class

    try:
        types = option_types(task_class(task)) if task else {}
    except ValueError:
        types = {}
    typed = dict(options)
    for key, value in options.items():
        if isinstance(value, OptionText):
            text = str(value)
            typed[key] = convert_option(key, text, types[key]) if key in types else text
    return typed


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, LossSpec) else value


def _loss_option_field(term: LossTerm, name: str, option: Option) -> tuple[str, Any, Any]:
    """A config field for one loss option: its type and range from the registry."""
    described = option.describe_range()
    text = f"{term.name} loss: {option.help}" + (f" ({described})" if described else "")
    return (
        term.field_name(name),
        option_type(option),
        field(default=option.default, metadata=_help(text)),
    )


# One field per option of each registered loss (focal_gamma, sadl_alpha, gdice_absent, ...).
LOSS_OPTION_FIELDS: dict[str, tuple[LossTerm, str, Option]] = option_fields()
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [_loss_option_field(*declared) for declared in LOSS_OPTION_FIELDS.values()],
    bases=(_TrainSettings,),
    namespace={
        "__module__": __name__,
        "__doc__": "Everything a training run needs; ``config.yaml`` in a run folder is this, "
        "resolved.",
    },
)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def coerce(name: str, value: Any, where: str = "config") -> Any:
    """A YAML or command-line value as the field's type, or a ConfigError naming the field."""
    try:
        return field_value(name, value)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def field_value(name: str, value: Any) -> Any:
    return validate(field_adapters(TrainConfig)[name], value, name)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping of config keys, checked against the fields (with line numbers)."""
    text = read_yaml_text(path, "config file")
    values = parse_yaml(text, str(path))
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if values is None:
        return {}
    if not isinstance(values, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    check_keys(values, FIELDS, str(path), lines)
    return {key: coerce(key, value, f"{path}, line {lines[key]}") for key, value in values.items()}


def preset_names() -> list[str]:
    files = (importlib.resources.files("seglm") / "configs").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (known: {', '.join(names)})")
    with importlib.resources.as_file(
        importlib.resources.files("seglm") / "configs" / f"{name}.yaml"
    ) as path:
        return read_yaml(path)


def resolve_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults < preset < YAML file < overrides (command-line flags or keyword arguments)."""
    overrides = dict(overrides or {})
    check_keys(overrides, FIELDS, "overrides")
    overrides = {key: coerce(key, value, "overrides") for key, value in overrides.items()}
    from_file = read_yaml(Path(path)) if path is not None else {}
    preset = overrides.get("preset", from_file.get("preset"))
    from_preset = read_preset(preset) if preset else {}
    try:
        return TrainConfig(**{**from_preset, **from_file, **overrides})
    except ConfigError as error:
        source = f"{path}: " if path is not None else ""
        raise ConfigError(f"{source}{error}") from None


def load_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config a run folder was made with."""
    return TrainConfig(**read_yaml(run_dir / RUN_CONFIG_FILE))


def write_config(config: TrainConfig, path: Path) -> None:
    """A run's config.yaml; its presence marks the folder as a run, so never half written."""
    write_atomically(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def missing_reporters(config: TrainConfig) -> list[str]:
    return [n for n in config.report_to if importlib.util.find_spec(REPORTERS[n]) is None]


# -- evaluation --------------------------------------------------------------------------------

# What defines an evaluation (eval_config.json, with the model and adapter): a rerun into its
# folder must have the same. The other fields select the examples (limit, random_subset: the
# predictions are kept by id), only score (answer_match, roscoe: a rerun scores again), say
# where things are, or change speed.
EVAL_IDENTITY: tuple[str, ...] = (
    "task",
    "task_options",
    "split",
    "scoring",
    "num_fewshot",
    "seed",
    "max_new_tokens",
    "dtype",
)


@dataclass(frozen=True)
class EvalConfig:
    """How a model is evaluated: ``seglm eval``'s flags, a grid file's ``eval:`` block, the
    settings of :func:`seglm.evaluate.evaluate`."""

    task: optional(Name) = field(
        default=None, metadata=_help("task name (default: the run folder's task)", "--task", "-t")
    )
    split: Name = field(default="test", metadata=_help("split to evaluate", "--split", "-s"))
    task_options: TaskOptions = field(
        default_factory=dict,
        metadata=_help("task option KEY=VALUE (repeatable)", "--option", "-o"),
    )
    scoring: choice(SCORINGS) = field(
        default="generate",
        metadata=_help(
            "generate (greedy + answer extraction), loglik (multiple choice: acc, acc_norm) or both"
        ),
    )
    answer_match: choice(ANSWER_MATCHES) = field(
        default="seglm",
        metadata=_help(
            "seglm (numeric comparison) or lm-eval (lm-evaluation-harness's gsm8k filters and "
            "exact_match settings, for the gsm8k format; docs/metrics.md lists the differences)"
        ),
    )
    limit: optional(Count) = field(
        default=None, metadata=_help("evaluate N examples only", "--limit", "-n")
    )
    random_subset: bool = field(
        default=False, metadata=_help("draw the --limit examples at random (--seed)")
    )
    seed: Seed = field(
        default=LM_EVAL_FEWSHOT_SEED,
        metadata=_help("seed of --random-subset and of the few-shot exemplars"),
    )
    batch_size: optional(Count) = field(
        default=None,
        metadata=_help("sequences per batch (default 32 on CPU, 64 on GPU; halved on OOM)"),
    )
    dtype: choice(DTYPES) = field(
        default="fp32", metadata=_help("weights' dtype: fp32, bf16, fp16 or auto")
    )
    max_new_tokens: optional(Count) = field(
        default=None, metadata=_help("generated tokens at most (default: the task's)")
    )
    num_fewshot: NonNegativeInteger = field(
        default=0, metadata=_help("exemplars from the train split before each prompt")
    )
    data_dir: optional(Text) = field(
        default=None,
        metadata=_help("folder with the datasets' files (default $SEGLM_DATA_DIR, else hub)"),
    )
    adapter: optional(Text) = field(
        default=None, metadata=_help("PEFT adapter folder to apply to MODEL")
    )
    chat_template: bool = field(
        default=False, metadata=_help("wrap prompts in the tokenizer's chat template")
    )
    allow_task_mismatch: bool = field(
        default=False,
        metadata=_help("evaluate a run on a task whose answer format differs from its own"),
    )
    roscoe: bool = field(
        default=False, metadata=_help("add ROSCOE reasoning-chain scores (generation only)")
    )
    roscoe_families: optional(choices(ROSCOE_FAMILIES)) = field(
        default=None, metadata=_help("comma-separated ROSCOE families (default: all four)")
    )
    trust_remote_code: bool = field(
        default=False,
        metadata=_help(
            "run the custom model code (auto_map) that MODEL's folder or hub repo ships; never "
            "taken from a run folder's config.yaml"
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_help(
            "start again in the output folder: seglm's evaluation files there are deleted, files "
            "of yours stay (docs/folders.md)"
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        options = typed_task_options(self.task, self.task_options)
        object.__setattr__(self, "task_options", options)
        if self.random_subset and self.limit is None:
            raise ConfigError("random_subset draws limit examples: give a limit")
        if self.roscoe_families is not None and not self.roscoe:
            raise ConfigError("roscoe_families needs roscoe (--roscoe)")

    def identity(self, model: str, adapter: str | None) -> dict[str, Any]:
        """What eval_config.json holds for this config once resolved (the task's name, its
        options and split as the task resolves them, the dtype and generation length used)."""
        fields = {name: getattr(self, name) for name in EVAL_IDENTITY}
        return json.loads(json.dumps({"model": model, "adapter": adapter, **fields}))


EVAL_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(EvalConfig)}
