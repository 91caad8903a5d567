"""CLI command modules; each exposes ``register(app: typer.Typer)``."""

from __future__ import annotations

from enum import Enum
from typing import Any

import typer


class AnswerMatch(str, Enum):
    """How exact match reads answers (``seglm.metrics.exact_match.ANSWER_MATCHES``)."""

    seglm = "seglm"
    lm_eval = "lm-eval"


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
