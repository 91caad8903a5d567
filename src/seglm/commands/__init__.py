"""CLI command modules; each exposes ``register(app: typer.Typer)``."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import typer

from seglm.metrics.exact_match import ANSWER_MATCHES


def choice_enum(name: str, values: Sequence[str]) -> Any:
    """A str Enum of ``values`` for a typer option, built from the tuple it mirrors (members
    named like the values, ``-`` as ``_``)."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


# How exact match reads answers.
AnswerMatch = choice_enum("AnswerMatch", ANSWER_MATCHES)


ANSWER_MATCH_HELP = (
    "seglm (numeric comparison) or lm-eval (lm-evaluation-harness's gsm8k filters and "
    "exact_match settings, for the gsm8k format; docs/metrics.md lists the differences)."
)


def roscoe_config(families: str | None) -> Any:
    """The ``--roscoe-families`` option (comma-separated; default all four) as a RoscoeConfig."""
    from seglm.metrics.roscoe import FAMILIES, RoscoeConfig

    chosen = tuple(f.strip() for f in families.split(",")) if families else FAMILIES
    try:
        return RoscoeConfig(families=chosen)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--roscoe-families") from None
