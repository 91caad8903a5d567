"""The value types of seglm's settings (the training config, the grid file, task options),
validated by pydantic, and one translation of pydantic's errors into seglm's messages: the file,
the line where known, the field, what it expects and what it got.

YAML and the command line give values as text or loosely typed: ``1e-4`` reaches us as a string
(PyYAML reads no float without a dot), ``none`` means None, a list may be ``a,b`` and task
options may be ``key=value`` items. The types below accept those spellings and nothing looser
(no ``true`` for a number)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)

from seglm.choices import check_choice
from seglm.paths import name_problem


class ConfigError(ValueError):
    """A bad setting: names the file, line or field and what was expected."""


def _not_bool(expected: str) -> Callable[[Any], Any]:
    def refuse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ConfigError(f"expects {expected}, got {value!r}")
        return value

    return refuse


def _none_word(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    return value


def _number_as_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _comma_list(value: Any) -> Any:
    if value is None or _none_word(value) is None:
        return []
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, list | tuple):
        return [str(item).strip() for item in items if str(item).strip()]
    return items


def _none_as_empty(value: Any) -> Any:
    return {} if value is None else value


def _key_value_items(value: Any) -> Any:
    if value is None:
        return {}
    pairs = [value] if isinstance(value, str) else value
    if isinstance(pairs, list | tuple):
        return read_items([str(pair) for pair in pairs], "", lambda key: f"option {key!r}")
    return value


class OptionText(str):
    """A ``key=value`` item's value, kept as the user typed it until the option's declared type
    reads it (a path stays whole: ``path=notes #1.jsonl`` is not cut at a YAML comment)."""


def _key_text_items(value: Any) -> Any:
    if value is None:
        return {}
    pairs = [value] if isinstance(value, str) else value
    if not isinstance(pairs, list | tuple):
        return value
    items = {}
    for pair in map(str, pairs):
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expects key=value, got {pair!r}")
        items[key.strip()] = OptionText(text)
    return items


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"expects a finite number, got {value!r}")
    return value


def _not_empty(value: str) -> str:
    if not value.strip():
        raise ConfigError("expects a name, got an empty one")
    return value


def _path_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ConfigError(f"{value!r} {problem}")
    return value


Integer = Annotated[int, BeforeValidator(_not_bool("an integer"))]
Number = Annotated[float, BeforeValidator(_not_bool("a number"))]
FiniteNumber = Annotated[Number, AfterValidator(_finite)]
Count = Annotated[Integer, Field(ge=1)]
NonNegativeInteger = Annotated[Integer, Field(ge=0)]
Positive = Annotated[FiniteNumber, Field(gt=0)]
NonNegative = Annotated[FiniteNumber, Field(ge=0)]
Probability = Annotated[FiniteNumber, Field(ge=0, lt=1)]  # dropout: 1 would drop everything
Text = Annotated[str, BeforeValidator(_number_as_text)]
NonEmptyText = Annotated[Text, AfterValidator(_not_empty)]
# A name that becomes a folder or file name (a task, a split): one path component.
Name = Annotated[Text, AfterValidator(_path_name)]
# What numpy, torch and transformers' set_seed accept.
SEED_MAX = 2**32 - 1
Seed = Annotated[Integer, Field(ge=0, le=SEED_MAX)]
TextList = Annotated[list[Text], BeforeValidator(_comma_list)]
NumberList = Annotated[list[Number], BeforeValidator(_comma_list)]
CountList = Annotated[list[Count], BeforeValidator(_comma_list)]
Options = Annotated[dict[str, Any], BeforeValidator(_key_value_items)]
# Task options: ``key=value`` items are text (OptionText) that the task's option types read.
TaskOptions = Annotated[dict[str, Any], BeforeValidator(_key_text_items)]


def mapping_of(kind: Any) -> Any:
    """A mapping of names to ``kind``; a missing (None) one is empty."""
    return Annotated[dict[str, kind], BeforeValidator(_none_as_empty)]


Mapping = mapping_of(Any)


def optional(kind: Any) -> Any:
    """``kind`` or None; the words ``none`` and ``null`` are None."""
    return Annotated[kind | None, BeforeValidator(_none_word)]


_LOOSE_TYPES: dict[Any, Any] = {int: Integer, float: Number, str: Text}


def schema_type(kind: Any) -> Any:
    """A plain annotation (``int``, ``str | None``) as the type above that reads it from YAML or
    command-line text."""
    args = typing.get_args(kind)
    if type(None) in args:
        return optional(schema_type(next(arg for arg in args if arg is not type(None))))
    return _LOOSE_TYPES.get(kind, kind)


def choice(names: Sequence[str]) -> Any:
    """A name out of ``choices``; anything else is refused with the closest name suggested."""

    def check(value: str, info: ValidationInfo) -> str:
        check_choice(_name(info), value, names, ConfigError)
        return value

    return Annotated[Text, AfterValidator(check)]


def _name(info: ValidationInfo) -> str:
    """The name of the setting being validated (a field's, or the one :func:`validate` gives)."""
    return info.field_name or (info.context or {}).get("field", "value")


def choices(names: Sequence[str], kind: type = list) -> Any:
    """A comma-separated list of names out of ``names`` (a ``kind``: list or tuple)."""

    def check(values: Sequence[str], info: ValidationInfo) -> Sequence[str]:
        for value in values:
            check_choice(_name(info), value, names, ConfigError)
        return values

    items = tuple[Text, ...] if kind is tuple else list[Text]
    return Annotated[items, BeforeValidator(_comma_list), AfterValidator(check)]


def check_fields(instance: Any, noun: str = "field") -> None:
    """Each field of a dataclass instance (frozen or not) as its declared type, in place, or a
    ConfigError naming the first field that is not (see :func:`validate`)."""
    for name, adapter in field_adapters(type(instance)).items():
        object.__setattr__(instance, name, validate(adapter, getattr(instance, name), name, noun))


def check_keys(
    keys: Iterable[str], known: Iterable[str], where: str, lines: dict[str, int] | None = None
) -> None:
    """Unknown keys are errors naming where they are (``lines``: each key's line in a file) and
    the closest known key."""
    known = list(known)
    for key in keys:
        if key in known:
            continue
        line = f", line {lines[key]}" if lines and key in lines else ""
        raise ConfigError(f"{where}{line}: unknown key {key!r}{closest(str(key), known)}")


def closest(name: str, names: Sequence[str]) -> str:
    """``; did you mean 'x'?`` for the name that ``name`` most likely misspells, or nothing."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@functools.cache
def field_adapters(cls: type) -> dict[str, TypeAdapter[Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {item.name: TypeAdapter(hints[item.name]) for item in dataclasses.fields(cls)}


# -- pydantic's errors as seglm's messages -----------------------------------------------------

_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
}
_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than": "<",
    "less_than_equal": "<=",
}


def describe(error: Any) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) in words: what the value is
    expected to be and what it was."""
    kind, value, context = error["type"], error["input"], error.get("ctx") or {}
    if kind in _EXPECTED:
        return f"expects {_EXPECTED[kind]}, got {value!r}"
    if kind in _BOUNDS:
        bound = next(iter(context.values()))
        return f"must be {_BOUNDS[kind]} {bound}, got {value!r}"
    if kind in ("value_error", "assertion_error") and "error" in context:
        return str(context["error"])
    return f"{error['msg']}, got {value!r}"


def validate(adapter: TypeAdapter[Any], value: Any, name: str, noun: str = "field") -> Any:
    """``value`` as the adapter's type, or a ConfigError that names the field (``noun`` says
    what it is: a config field, a task option) and what it expects. A message from one of our
    validators that names the field already (``adapter='lroa' is not one of ...``) is kept."""
    try:
        return adapter.validate_python(value, context={"field": name})
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        text = describe(first)
        if text.startswith(f"{name}="):
            raise ConfigError(text) from None
        item = "".join(f"[{part}]" for part in first["loc"])
        raise ConfigError(f"{noun} {name + item!r} {text}") from None


# -- YAML --------------------------------------------------------------------------------------


class _KeyProblem(ValueError):
    """A mapping key that seglm refuses: given twice, or not a name."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build objects), refusing what it lets through
    silently: a key given twice (the last one would win) and a key that is not text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *defaults`` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise _KeyProblem(
                    f"line {line}: key {key!r} is not a name; keys are text (quote it: '{key}')"
                )
            if key in seen:
                raise _KeyProblem(
                    f"line {seen[key]} and line {line}: key {key!r} is given twice; keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_text(path: str | os.PathLike[str], what: str) -> str:
    """The text of a YAML file (``what``: "config file", "grid file"), or a ConfigError that
    names the file: missing or unreadable, binary, or not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file, not YAML text; give a {what} written as text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x}); save the "
            f"{what} as UTF-8"
        ) from None


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as Python values (the safe subset), a key given twice or a key that is not text
    refused with its line; ``where`` (a file, a flag) starts every error."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _KeyProblem as problem:
        raise ConfigError(f"{where}, {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from None


def read_yaml_file(path: str | os.PathLike[str], what: str) -> Any:
    """A YAML file's values: :func:`read_yaml_text`, then :func:`parse_yaml`."""
    return parse_yaml(read_yaml_text(path, what), str(path))


# -- key=value items ---------------------------------------------------------------------------


def read_items(
    items: list[str], what: str, label: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """``["key=value", ...]`` as a mapping, each value read as YAML (:func:`read_value`);
    ``label(key)`` names one item in errors (default ``"{what} {key}"``)."""
    mapping: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{what} expects key=value, got {item!r}".strip())
        mapping[key] = read_value(raw, label(key) if label else f"{what} {key}")
    return mapping


def read_value(text: str, what: str) -> Any:
    """A ``key=value`` item's value, read as YAML (``3``, ``true``, ``[a, b]``), or an error
    naming the option: a value YAML cannot read (``*/``: ``*`` starts a YAML alias) must be
    quoted."""
    if not text:
        return ""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _KeyProblem as problem:
        raise ConfigError(f"{what}: in value {text!r}, {problem}") from None
    except yaml.YAMLError as error:
        reason = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(
            f"{what}: cannot read value {text!r} ({reason}); quote it, e.g. '\"{text}\"'"
        ) from None
