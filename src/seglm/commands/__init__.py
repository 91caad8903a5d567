"""CLI command modules; each exposes ``register(app: typer.Typer)``."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Sequence
from enum import Enum
from typing import Any

import typer


def choice_enum(name: str, values: Sequence[str]) -> Any:
    """A str Enum of ``values`` for a typer option, built from the tuple it mirrors (members
    named like the values, ``-`` as ``_``)."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


def roscoe_config(families: str | None) -> Any:
    """The ``--roscoe-families`` option (comma-separated; default all four) as a RoscoeConfig."""
    from seglm.metrics.roscoe import FAMILIES, RoscoeConfig

    try:
        return RoscoeConfig(families=families or FAMILIES)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--roscoe-families") from None


def config_flags(config_class: type) -> list[inspect.Parameter]:
    """One typer option per field of a settings dataclass (``learning_rate`` is
    ``--learning-rate``, unless the field's metadata names its flags), each None when not given,
    so that values from elsewhere (a YAML file, a preset) stay."""
    hints = typing.get_type_hints(config_class)
    return [_flag(item, hints[item.name]) for item in dataclasses.fields(config_class)]


def _flag(item: dataclasses.Field, kind: Any) -> inspect.Parameter:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    base = typing.get_origin(kind) or kind
    names = item.metadata.get("flags") or ("--" + item.name.replace("_", "-"),)
    if base is bool:
        names = (f"{names[0]}/--no-{names[0][2:]}", *names[1:])
    default = item.default
    shown = "" if default in (None, dataclasses.MISSING) else f" (default: {default})"
    help_text = item.metadata.get("help", "") + shown
    # Lists are comma-separated text; a mapping (task options) is repeated key=value items.
    # (A loss spec is text: LossSpec is a str.)
    text = isinstance(base, type) and issubclass(base, str | list | tuple)
    kind = list[str] if base is dict else str if text else base
    option = typer.Option(None, *names, help=help_text, show_default=False)
    return inspect.Parameter(
        item.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None
    )
