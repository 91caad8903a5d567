"""The seglm command line: each command is a few lines that call the library."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Segmentation-style losses for fine-tuning causal LMs.", no_args_is_help=True
)


@app.callback()
def main() -> None:
    """seglm: fine-tune causal LMs with segmentation losses and measure what they buy."""
