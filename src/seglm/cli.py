"""The seglm command line: each command is a few lines that call the library.

Command groups live in ``seglm.commands.<name>`` and are registered below, so that importing
the CLI stays cheap (heavy imports happen inside each command).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

app = typer.Typer(
    help="Fine-tune causal LMs with segmentation-style losses and measure what they buy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Also show the libraries' own logs, warnings and progress bars.",
    ),
) -> None:
    """seglm: fine-tune causal LMs with segmentation losses and measure what they buy."""
    sleep_idle_threads()
    if not verbose:
        quiet_libraries()


# The libraries whose loggers stay at errors only, unless --verbose.
LIBRARY_LOGGERS = (
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "sentence_transformers",
    "torch",
    "filelock",
    "submitit",
)


def quiet_libraries() -> None:
    """Keep the console to seglm's own progress lines, tables and messages: the libraries
    underneath print their progress bars, log lines and warnings (deprecations inside them,
    advice users cannot act on) only with --verbose. Warnings raised by seglm's own calls still
    show, so a deprecated name seglm uses is seen and replaced. Set before the libraries are
    imported, where they read it from the environment."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' and the hub's
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", module=r"(?!seglm\b)")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already (in-process use): the env is read
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()


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
