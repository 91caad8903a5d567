"""``seglm eval MODEL [--task TASK] [--split SPLIT] ...``: evaluate a model, a model plus a LoRA
adapter, or a seglm run folder on a task split (docs/evaluation.md)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from seglm.commands import config_flags
from seglm.config import EvalConfig

if TYPE_CHECKING:
    from seglm.evaluate import EvalResult, ModelSource


def _command_signature() -> inspect.Signature:
    """MODEL, where the results go, how they are shown, and a flag per EvalConfig field."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    model = inspect.Parameter(
        "model",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Argument(
            ...,
            metavar="MODEL",
            help="Alias (smollm2-135m-instruct), hub id, model folder, seglm run folder or one "
            "of its checkpoints.",
        ),
        annotation=str,
    )
    output_dir = inspect.Parameter(
        "output_dir",
        keyword,
        default=typer.Option(
            None,
            "--output-dir",
            help="Where predictions.jsonl and metrics.json go (default: RUN/eval-TASK-SPLIT for "
            "a run folder, else evals/MODEL-TASK-SPLIT). A rerun resumes.",
        ),
        annotation=Path | None,
    )
    quiet = inspect.Parameter(
        "quiet",
        keyword,
        default=typer.Option(False, "--quiet", "-q", help="No progress bar."),
        annotation=bool,
    )
    as_json = inspect.Parameter(
        "as_json",
        keyword,
        default=typer.Option(False, "--json", help="Print metrics.json."),
        annotation=bool,
    )
    return inspect.Signature([model, output_dir, quiet, as_json, *config_flags(EvalConfig)])


def register(app: typer.Typer) -> None:
    def eval_command(
        model: str,
        output_dir: Path | None = None,
        quiet: bool = False,
        as_json: bool = False,
        **flags: Any,
    ) -> None:
        """Evaluate MODEL on a task split: predictions.jsonl (resumable) and metrics.json."""
        from seglm.evaluate import evaluate, resolve_model

        given = {key: value for key, value in flags.items() if value is not None}
        try:
            config = EvalConfig(**{k: v for k, v in given.items() if k != "task_options"})
            source = resolve_model(
                model, config.adapter, trust_remote_code=config.trust_remote_code
            )
            config = with_task(config, source, given.get("task_options", []))
            out_dir = output_dir or default_output_dir(source, config)
            result = evaluate(source, out_dir=out_dir, config=config, progress=not quiet)
        except (ValueError, OSError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(result.metrics_path.read_text().strip())
        else:
            _print_summary(result)

    eval_command.__signature__ = _command_signature()  # type: ignore[attr-defined]
    app.command("eval")(eval_command)


def with_task(config: EvalConfig, source: ModelSource, option_items: list[str]) -> EvalConfig:
    """The config with its task (a run folder's when not given) and the ``--option`` items read
    as that task's option types."""
    from seglm.tasks import parse_option_text, task_class

    task = config.task or (source.run_config.task if source.run_config else None)
    if task is None:
        raise ValueError("give --task (MODEL is not a seglm run folder that names one)")
    options = parse_option_text(task_class(task), option_items)
    return dataclasses.replace(config, task=task, task_options=options)


def default_output_dir(source: ModelSource, config: EvalConfig) -> Path:
    """``RUN/eval-TASK-SPLIT`` inside a run folder, else ``evals/MODEL-TASK-SPLIT``; a scoring
    other than generate and few-shot prompts add a suffix."""
    suffix = "" if config.scoring == "generate" else f"-{config.scoring}"
    suffix += f"-{config.num_fewshot}shot" if config.num_fewshot else ""
    name = f"{config.task}-{config.split}{suffix}"
    if source.run_config is not None:
        return Path(source.name) / f"eval-{name}"
    return Path("evals") / f"{Path(source.name).name.lower()}-{name}"


def _print_summary(result: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = json.loads(result.metrics_path.read_text())
    title = f"{summary['task']}/{summary['split']}, {result.n} examples"
    table = Table("metric", "mean", "examples", title=title)
    for name, count in result.counts.items():
        mean = f"{result.metrics[name]:.4f}" if name in result.metrics else "n/a"
        table.add_row(name, mean, str(count))
    console = Console()
    console.print(f"model: {summary['model']}", highlight=False)
    console.print(table)
    if result.resumed:
        console.print(f"resumed: {result.resumed} predictions were already there", highlight=False)
    rates = result.throughput
    if rates["examples"]:
        console.print(
            f"{rates['examples']} examples in {rates['seconds']:.1f} s: "
            f"{rates['examples_per_s']:.2f} examples/s, {rates['tokens_per_s']:.1f} tokens/s",
            highlight=False,
        )
    console.print(f"predictions: {result.predictions_path}", highlight=False)
    console.print(f"metrics: {result.metrics_path}", highlight=False)
