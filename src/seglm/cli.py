"""The seglm command line: each command is a few lines that call the library.

Command groups live in ``seglm.commands.<name>`` and are registered below, so that importing
the CLI stays cheap (heavy imports happen inside each command).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Fine-tune causal LMs with segmentation-style losses and measure what they buy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """seglm: fine-tune causal LMs with segmentation losses and measure what they buy."""


def _register() -> None:
    # One line per command module; each module exposes ``register(app)``.
    from seglm.commands import compare, data, demo, eval, losses, report, score, train

    for module in (compare, data, demo, eval, losses, report, score, train):
        module.register(app)


_register()
