"""Tasks: datasets as examples (prompt, target, reference) with their answer format.

``get_task(name, **options)`` builds a task; ``task.load(split)`` returns its examples and
``task.load_with_report(split)`` also says what was read and skipped. See docs/tasks.md.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from .arith import Arith
from .base import (
    DataError,
    Example,
    Loaded,
    LoadReport,
    Task,
    convert_option,
    option_types,
    parse_option_text,
)
from .gsm8k import GSM8K
from .hellaswag import HellaSwag
from .jsonl import Jsonl
from .mathqa import MathQA
from .openbookqa import OpenBookQA
from .sources import DATA_DIR_VARIABLE

_REGISTRY: dict[str, type[Task]] = {
    task.name: task for task in (GSM8K, MathQA, OpenBookQA, HellaSwag, Arith, Jsonl)
}
TASKS: tuple[str, ...] = tuple(_REGISTRY)


def task_class(name: str) -> type[Task]:
    """The class of a task by name; an unknown name suggests the closest ones."""
    key = name.strip().lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, TASKS, n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; available: {', '.join(TASKS)}")
    return _REGISTRY[key]


def get_task(name: str, **options: Any) -> Task:
    """A task by name with its options (e.g. ``target="full"``, ``prompt_style="chat"``)."""
    cls = task_class(name)
    accepted = [option.name for option in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"task {cls.name!r} has no option {', '.join(unknown)}; "
            f"its options: {', '.join(accepted)}"
        )
    types = option_types(cls)
    try:
        typed = {
            key: convert_option(key, value, types[key]) if key in types else value
            for key, value in options.items()
        }
    except ValueError as error:
        raise ValueError(f"task {cls.name!r}: {error}") from None
    return cls(**typed)


__all__ = [
    "DATA_DIR_VARIABLE",
    "TASKS",
    "DataError",
    "Example",
    "LoadReport",
    "Loaded",
    "Task",
    "get_task",
    "parse_option_text",
    "task_class",
]
