"""The seglm command line: each command is a few lines that call the library.

Command groups live in ``seglm.commands.<name>`` and are registered below, so that importing
the CLI stays cheap (heavy imports happen inside each command).
"""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(
    help="Fine-tune causal LMs with segmentation-style losses and measure what they buy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """seglm: fine-tune causal LMs with segmentation losses and measure what they buy."""
    sleep_idle_threads()


def sleep_idle_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise; it must be
    set before torch is imported (the OpenMP runtime reads it once).

    A spinning thread steals the core that a thread of its own team, or another process, needs.
    Measured on 2 cores (AVX2), a LoRA step of SmolLM2-135M with 2 threads (benchmarks/
    train_step.py --contention): idle 7.2 s spinning, 8.1 s sleeping; next to one other
    CPU-bound process, 22.0 s spinning, 10.5 s sleeping."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _register() -> None:
    # One line per command module; each module exposes ``register(app)``.
    from seglm.commands import compare, data, demo, eval, losses, report, score, train

    for module in (compare, data, demo, eval, losses, report, score, train):
        module.register(app)


_register()
