"""``seglm train [CONFIG.yaml] [--preset NAME] [--field value ...]``.

Every field of :class:`seglm.config.TrainConfig` is a flag (``learning_rate`` is
``--learning-rate``); flags override the YAML file, which overrides the preset.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from seglm.commands import config_flags
from seglm.config import TrainConfig
from seglm.runs import RUN_CONFIG_FILE


def _command_signature() -> inspect.Signature:
    config_file = inspect.Parameter(
        "config_file",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Argument(None, help="YAML config file (keys are the flags' field names)."),
        annotation=Path | None,
    )
    quiet = inspect.Parameter(
        "quiet",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(False, "--quiet", "-q", help="No progress bar."),
        annotation=bool,
    )
    return inspect.Signature([config_file, quiet, *config_flags(TrainConfig)])


def register(app: typer.Typer) -> None:
    def train_command(config_file: Path | None = None, quiet: bool = False, **flags: Any) -> None:
        """Fine-tune a causal LM on a task with a seglm objective (LoRA by default)."""
        from seglm.config import ConfigError, resolve_config
        from seglm.trainer import NonFiniteLossError

        console = Console(stderr=True)
        overrides = {key: value for key, value in flags.items() if value is not None}
        try:
            config = resolve_config(_base_config(config_file, overrides), overrides)
            from seglm.train import train

            result = train(config, progress=not quiet)
        except (ConfigError, NonFiniteLossError, FileNotFoundError) as error:
            console.print(f"[red]error:[/red] {error}", highlight=False)
            raise typer.Exit(1) from None
        if int(os.environ.get("RANK", "0")) != 0:  # one summary from a multi-process launch
            return
        console.print(
            f"run folder: {result.run_dir} ({result.final_weights} weights, "
            f"{result.global_step} steps)",
            highlight=False,
        )
        for key, value in result.metrics.items():
            console.print(f"  {key}: {value:.4g}", highlight=False)

    train_command.__signature__ = _command_signature()  # type: ignore[attr-defined]
    app.command("train", no_args_is_help=False)(train_command)


def _base_config(config_file: Path | None, overrides: dict[str, Any]) -> Path | None:
    """``--resume`` alone continues the run in ``--output-dir`` with the config saved there."""
    from seglm.config import resolve_config

    if config_file is None and overrides.get("resume") and "preset" not in overrides:
        saved = resolve_config(overrides=overrides).run_dir / RUN_CONFIG_FILE
        if saved.is_file():
            _check_trust(saved, overrides)
            return saved
    return config_file


def _check_trust(saved: Path, overrides: dict[str, Any]) -> None:
    """A run folder is data: its config.yaml cannot turn on custom model code by itself."""
    from seglm.config import ConfigError, load_run_config

    if load_run_config(saved.parent).trust_remote_code and "trust_remote_code" not in overrides:
        raise ConfigError(
            f"{saved} sets trust_remote_code: true, and seglm takes no trust from a run folder; "
            "pass --trust-remote-code to resume it with its model's custom code"
        )
