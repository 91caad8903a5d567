"""``TrainConfig``: one dataclass shared by YAML files, packaged presets and CLI flags.

Precedence, lowest first: the dataclass defaults, a preset (``preset: paper-gsm8k``, a YAML file
packaged in ``seglm/configs``), the user's YAML file, then command-line flags. Unknown keys are
errors with a "did you mean" suggestion. This module is cheap to import (no torch, no
transformers): the CLI builds its flags from it at start-up.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import importlib.util
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seglm.choices import check_choice
from seglm.runs import RUN_CONFIG_FILE

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


class ConfigError(ValueError):
    """A bad configuration: names the file, line or field and what was expected."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Everything a training run needs; ``config.yaml`` in a run folder is this, resolved."""

    # model
    model: str = field(
        default="smollm2-135m-instruct",
        metadata=_help("hub id, local folder, or the offline alias smollm2-135m-instruct"),
    )
    trust_remote_code: bool = field(default=False, metadata=_help("allow custom model code"))
    # data
    task: str = field(default="arith", metadata=_help("task name (seglm.tasks)"))
    task_options: dict[str, Any] = field(
        default_factory=dict, metadata=_help("task options, key=value (repeatable)")
    )
    data_dir: str | None = field(default=None, metadata=_help("folder with the task's files"))
    train_split: str = field(default="train", metadata=_help("split to train on"))
    eval_split: str | None = field(
        default=AUTO,
        metadata=_help("validation split: auto (validation/dev if the task has one) or none"),
    )
    train_limit: int | None = field(default=None, metadata=_help("use at most N train examples"))
    eval_limit: int | None = field(default=None, metadata=_help("use at most N eval examples"))
    max_length: int | None = field(
        default=None, metadata=_help("max tokens per example (default: the task's)")
    )
    overflow: str = field(
        default="truncate_prompt",
        metadata=_help("too-long examples: truncate_prompt (never the answer) or drop"),
    )
    # objective
    loss: str = field(
        default="ce=0.6,lovasz=0.4", metadata=_help('loss spec, e.g. "ce=0.6,lovasz=0.4"')
    )
    ce_scope: str = field(default="all", metadata=_help("CE over all supervised tokens or answer"))
    group: str = field(
        default="sequence", metadata=_help("set-loss grouping: sequence (per example) or batch")
    )
    focal_gamma: float = field(default=2.0, metadata=_help("focal loss gamma"))
    sadl_alpha: float = field(default=1.0, metadata=_help("self-adjusting dice alpha"))
    sadl_gamma: float = field(default=1.0, metadata=_help("self-adjusting dice gamma"))
    gdice_weighting: str = field(default="square", metadata=_help("generalized dice weighting"))
    gdice_absent: str = field(
        default="present", metadata=_help("generalized dice absent classes: present|max|paper")
    )
    gdice_smooth: float = field(default=1e-5, metadata=_help("generalized dice smoothing"))
    # adapter
    adapter: str = field(default="lora", metadata=_help("lora, qlora (GPU + bitsandbytes) or full"))
    lora_r: int = field(default=8, metadata=_help("LoRA rank"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA alpha"))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout"))
    target_modules: list[str] | None = field(
        default=None,
        metadata=_help("LoRA target modules, comma-separated (default: every linear layer)"),
    )
    # optimisation
    epochs: float = field(default=1.0, metadata=_help("training epochs"))
    max_steps: int | None = field(
        default=None, metadata=_help("optimiser steps (overrides epochs)")
    )
    learning_rate: float = field(default=1e-4, metadata=_help("peak learning rate"))
    batch_size: int = field(default=4, metadata=_help("examples per device per micro-batch"))
    eval_batch_size: int | None = field(
        default=None, metadata=_help("eval batch size (default: batch_size)")
    )
    grad_accum: int = field(default=1, metadata=_help("gradient accumulation steps"))
    warmup_steps: int = field(default=0, metadata=_help("learning-rate warm-up steps"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    scheduler: str = field(default="linear", metadata=_help("learning-rate schedule"))
    optim: str = field(default="adamw_torch", metadata=_help("optimiser (transformers name)"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping; 0 disables"))
    seed: int = field(default=42, metadata=_help("seed for init, dropout and data order"))
    group_by_length: bool = field(
        default=False,
        metadata=_help("batch examples of similar length (less padding; random batch order)"),
    )
    dtype: str = field(
        default="fp32",
        metadata=_help("fp32, bf16/fp16 autocast, or auto: bf16 where the hardware has it"),
    )
    fused_loss: bool | None = field(
        default=None,
        metadata=_help(
            "loss from hidden states in chunks, never all logits (default: when the model allows)"
        ),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute activations in backward")
    )
    # evaluation, checkpoints, logs
    eval_steps: int | None = field(
        default=None, metadata=_help("validation loss every N steps (default: each epoch)")
    )
    save_steps: int | None = field(
        default=None, metadata=_help("checkpoint every N steps (default: at each evaluation)")
    )
    save_total_limit: int | None = field(
        default=2, metadata=_help("checkpoints kept (the best one is always kept)")
    )
    logging_steps: int = field(default=10, metadata=_help("log losses every N steps"))
    final_weights: str = field(
        default="best", metadata=_help("weights at the run root: best (by eval loss) or last")
    )
    report_to: list[str] = field(
        default_factory=list, metadata=_help("tensorboard, wandb, mlflow (comma-separated)")
    )
    # run
    output_dir: str | None = field(
        default=None, metadata=_help("run folder (default: runs/<task>-<model>-<loss>-seed<seed>)")
    )
    run_name: str | None = field(default=None, metadata=_help("run name for trackers"))
    preset: str | None = field(default=None, metadata=_help("packaged preset, e.g. paper-gsm8k"))
    overwrite: bool = field(
        default=False, metadata=_help("replace an output folder that holds another run")
    )
    resume: bool = field(
        default=False, metadata=_help("continue the run in output_dir from its last checkpoint")
    )

    def __post_init__(self) -> None:
        _check_choice("adapter", self.adapter, ADAPTERS)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("overflow", self.overflow, OVERFLOWS)
        _check_choice("final_weights", self.final_weights, FINAL_WEIGHTS)
        for name in ("batch_size", "grad_accum", "lora_r", "logging_steps"):
            _check_positive(name, getattr(self, name))
        for name in (
            "eval_batch_size",
            "max_steps",
            "max_length",
            "eval_steps",
            "save_steps",
            "train_limit",
            "eval_limit",
            "save_total_limit",
        ):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(
                f"field 'lora_dropout' is a probability in [0, 1), got {self.lora_dropout}"
            )
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ConfigError(f"field 'lora_alpha' must be a number > 0, got {self.lora_alpha}")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ConfigError(f"field 'epochs' must be a number > 0, got {self.epochs}")
        if self.learning_rate < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("learning_rate, warmup_steps and weight_decay must be >= 0")
        for name in self.report_to:
            _check_choice("report_to", name, tuple(REPORTERS))
        if self.overwrite and self.resume:
            raise ConfigError("overwrite and resume exclude each other: pick one")

    @property
    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        loss = re.sub(r"[^a-z0-9.]+", "-", self.loss.lower()).strip("-")
        model = Path(self.model).name.lower()
        return Path("runs") / f"{self.task}-{model}-{loss}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (what a resumed run must share with the first)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    check_choice(name, value, choices, ConfigError)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"field {name!r} must be >= 1, got {value}")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


def check_keys(keys: typing.Iterable[str], where: str, lines: dict[str, int] | None = None) -> None:
    """Unknown keys are errors; a typo gets the closest field name."""
    for key in keys:
        if key in FIELDS:
            continue
        close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        line = f", line {lines[key]}" if lines and key in lines else ""
        raise ConfigError(f"{where}{line}: unknown key {key!r}{hint}")


def coerce(name: str, value: Any, where: str = "config") -> Any:
    """Convert a YAML or command-line value to the field's type, or fail naming the field."""
    return _coerce(FIELD_TYPES[name], value, f"{where}: field {name!r}")


def _coerce(kind: Any, value: Any, what: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if _is_none(value):
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, what)
    if origin is list:
        return _coerce_list(args[0], value, what)
    if origin is dict:
        return _coerce_mapping(value, what)
    if kind is bool:
        return _coerce_bool(value, what)
    if kind in (int, float):
        return _coerce_number(kind, value, what)
    if kind is str and isinstance(value, dict | list):
        raise ConfigError(f"{what} expects a string, got {value!r}")
    return str(value) if kind is str else value


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("none", "null"))


def _coerce_list(kind: Any, value: Any, what: str) -> list[Any]:
    if _is_none(value):
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{what} expects a list, got {value!r}")
    return [_coerce(kind, str(item).strip(), what) for item in items if str(item).strip()]


def _coerce_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{what} expects true or false, got {value!r}")


def _coerce_number(kind: type, value: Any, what: str) -> int | float:
    if not isinstance(value, bool):
        if isinstance(value, int) or (kind is float and isinstance(value, float)):
            return kind(value)
        if isinstance(value, str):
            # PyYAML reads 1e-4 (no dot) as a string.
            try:
                return kind(value)
            except ValueError:
                pass
    expected = "an integer" if kind is int else "a number"
    raise ConfigError(f"{what} expects {expected}, got {value!r}")


def _coerce_mapping(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    pairs = [value] if isinstance(value, str) else value
    if not isinstance(pairs, list | tuple):
        raise ConfigError(f"{what} expects a mapping or key=value items, got {value!r}")
    return read_items([str(pair) for pair in pairs], what, lambda key: f"{what}: option {key!r}")


def read_items(
    items: list[str], what: str, label: typing.Callable[[str], str] | None = None
) -> dict[str, Any]:
    """``["key=value", ...]`` as a mapping, each value read as YAML (:func:`read_value`);
    ``label(key)`` names one item in errors (default ``"{what} {key}"``)."""
    mapping: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{what} expects key=value, got {item!r}")
        mapping[key] = read_value(raw, label(key) if label else f"{what} {key}")
    return mapping


def read_value(text: str, what: str) -> Any:
    """A ``key=value`` item's value, read as YAML (``3``, ``true``, ``[a, b]``), or a ConfigError
    naming the option: a value YAML cannot read (``*/``: ``*`` starts a YAML alias) must be
    quoted."""
    if not text:
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(
            f"{what}: cannot read value {text!r} ({problem}); quote it, e.g. '\"{text}\"'"
        ) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping of config keys, checked against the fields (with line numbers)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    check_keys(values, str(path), lines)
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
    check_keys(overrides, "overrides")
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
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def missing_reporters(config: TrainConfig) -> list[str]:
    return [n for n in config.report_to if importlib.util.find_spec(REPORTERS[n]) is None]
