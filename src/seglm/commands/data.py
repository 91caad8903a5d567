"""``seglm data``: look at a task's examples (``show``) and token statistics (``stats``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import typer

DEFAULT_MODEL = "smollm2-135m-instruct"

SPLIT = typer.Option("test", "--split", "-s", help="Split name (see docs/tasks.md).")
DATA_DIR = typer.Option(
    None,
    "--data-dir",
    help="Folder with one folder per dataset (original file names); "
    "default $SEGLM_DATA_DIR, else the Hugging Face hub.",
)
OPTIONS = typer.Option(
    [], "--option", "-o", help="Task option KEY=VALUE, repeatable (e.g. -o target=full)."
)
JSON_OUTPUT = typer.Option(False, "--json", help="Machine-readable output.")


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(
        help="Inspect task data: examples and token-length statistics.", no_args_is_help=True
    )
    app.add_typer(data_app, name="data")

    @data_app.command("show")
    def show_command(
        task: str = typer.Argument(..., help="Task: gsm8k, mathqa, openbookqa, hellaswag, ..."),
        split: str = SPLIT,
        limit: int = typer.Option(5, "--limit", "-n", help="How many examples (0: all)."),
        data_dir: str | None = DATA_DIR,
        option: list[str] = OPTIONS,
        model: str = typer.Option(DEFAULT_MODEL, help="Tokenizer for -o prompt_style=chat."),
        json_output: bool = JSON_OUTPUT,
    ) -> None:
        """Print the examples of a split (JSON Lines under --json)."""
        with user_errors():
            chosen = build_task(task, option, model)
            loaded = chosen.load_with_report(split, data_dir, limit or None)
        for example in loaded.examples:
            if json_output:
                typer.echo(json.dumps(dataclasses.asdict(example), ensure_ascii=False))
            else:
                typer.echo(describe(example))
        for message in loaded.report.errors[:3]:
            typer.echo(f"skipped: {message}", err=True)

    @data_app.command("stats")
    def stats_command(
        task: str = typer.Argument(..., help="Task: gsm8k, mathqa, openbookqa, hellaswag, ..."),
        split: str = SPLIT,
        data_dir: str | None = DATA_DIR,
        option: list[str] = OPTIONS,
        model: str = typer.Option(DEFAULT_MODEL, help="Tokenizer whose token counts to report."),
        max_length: int = typer.Option(0, help="Token limit (0: the task's default)."),
        ce_scope: str = typer.Option("all", help="Cross-entropy scope: all or answer."),
        overflow: str = typer.Option("truncate_prompt", help="truncate_prompt or drop."),
        json_output: bool = JSON_OUTPUT,
    ) -> None:
        """Count a split's examples, what tokenisation keeps, drops and truncates, and lengths."""
        from seglm.data import tokenize_examples
        from seglm.models import load_tokenizer

        with user_errors():
            tokenizer = load_tokenizer(model)
            chosen = build_task(task, option, tokenizer)
            loaded = chosen.load_with_report(split, data_dir)
            limit = max_length or chosen.default_max_length
            tokenized = tokenize_examples(loaded.examples, tokenizer, limit, ce_scope, overflow)
        report = loaded.report
        stats = {
            "task": report.task,
            "split": report.split,
            "source": report.source,
            "model": model,
            "records": report.records,
            "skipped": dict(report.skipped),
            **tokenized.report,
        }
        if json_output:
            typer.echo(json.dumps(stats))
        else:
            print_stats(stats)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns the errors bad input raises into a one-line message and exit status 1."""
    try:
        yield
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def build_task(name: str, items: list[str], tokenizer_or_model: Any) -> Any:
    """The task with its -o options; a chat prompt style gets the tokenizer (loaded if named)."""
    from seglm.tasks import get_task, parse_option_text, task_class

    options = parse_option_text(task_class(name), items)
    if options.get("prompt_style") == "chat":
        if isinstance(tokenizer_or_model, str):
            from seglm.models import load_tokenizer

            tokenizer_or_model = load_tokenizer(tokenizer_or_model)
        options["tokenizer"] = tokenizer_or_model
    return get_task(name, **options)


def describe(example: Any) -> str:
    lines = [f"── {example.id} ──", "prompt:", example.prompt, f"target: {example.target}"]
    if example.reference != example.target:
        lines.append(f"reference: {example.reference}")
    return "\n".join(lines) + "\n"


def print_stats(stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title, caption = f"{stats['task']} / {stats['split']}", f"source: {stats['source']}"
    counts = Table("count", "value", title=title, caption=caption)
    for key in ("records", "examples", "kept", "dropped", "dropped_answer_too_long",
                "dropped_prompt_too_long", "dropped_prompt_uncuttable", "truncated",
                "truncated_tokens", "max_length"):  # fmt: skip
        counts.add_row(key, str(stats[key]))
    for reason, count in stats["skipped"].items():
        counts.add_row(f"skipped: {reason}", str(count))
    lengths = Table(
        "tokens", "min", "mean", "p50", "p95", "max", title=f"token lengths ({stats['model']})"
    )
    for part, values in stats["tokens"].items():
        if values is not None:
            lengths.add_row(part, *(f"{values[k]:g}" for k in ("min", "mean", "p50", "p95", "max")))
    console = Console()
    console.print(counts)
    console.print(lengths)
