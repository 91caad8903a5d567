"""CLI command modules; each exposes ``register(app: typer.Typer)``."""

from __future__ import annotations

from typing import Any

import typer


def roscoe_config(families: str | None) -> Any:
    """The ``--roscoe-families`` option (comma-separated; default all four) as a RoscoeConfig."""
    from seglm.metrics.roscoe import FAMILIES, RoscoeConfig

    chosen = tuple(f.strip() for f in families.split(",")) if families else FAMILIES
    try:
        return RoscoeConfig(families=chosen)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--roscoe-families") from None
