"""``seglm score``: score a predictions file made by anything (seglm, vLLM, an API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from seglm.commands import choice_enum
from seglm.config import EVAL_FIELDS
from seglm.metrics.exact_match import ANSWER_FORMATS, ANSWER_MATCHES

if TYPE_CHECKING:
    from seglm.metrics import ScoredExample


AnswerFormat = choice_enum("AnswerFormat", ANSWER_FORMATS)
AnswerMatch = choice_enum("AnswerMatch", ANSWER_MATCHES)  # how exact match reads answers


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score_command(
        task: Annotated[
            str,
            typer.Argument(metavar="TASK", help="Task name (gsm8k, mathqa, openbookqa, ...)."),
        ],
        predictions: Annotated[
            Path,
            typer.Argument(
                metavar="PREDICTIONS",
                exists=True,
                dir_okay=False,
                readable=True,
                help='JSON Lines, one {"prediction": ..., "reference": ...} object per line.',
            ),
        ],
        answer_format: Annotated[
            AnswerFormat | None,
            typer.Option("--format", help="Answer format; overrides the one TASK defines."),
        ] = None,
        answer_match: Annotated[
            AnswerMatch,
            typer.Option("--answer-match", help=EVAL_FIELDS["answer_match"].metadata["help"]),
        ] = AnswerMatch.seglm,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print one JSON object, no table.")
        ] = False,
        per_example: Annotated[
            Path | None,
            typer.Option("--per-example", help="Write each example's metrics here (JSON Lines)."),
        ] = None,
        roscoe: Annotated[
            bool,
            typer.Option(
                "--roscoe",
                help="Add ROSCOE reasoning-chain scores; each line needs the question as "
                "'source' (or 'question', or seglm eval's 'prompt').",
            ),
        ] = False,
        roscoe_families: Annotated[
            str | None,
            typer.Option(help="Comma-separated ROSCOE families (default: all four)."),
        ] = None,
        correlations: Annotated[
            Path | None,
            typer.Option(help="With --roscoe: write Pearson correlations (JSON) and print them."),
        ] = None,
    ) -> None:
        """Score PREDICTIONS with TASK's metrics and print the means."""
        from seglm.metrics import PredictionsFileError, aggregate, count_scored, score_file

        _check_outputs(predictions, {"--per-example": per_example, "--correlations": correlations})
        fmt = answer_format.value if answer_format else _task_answer_format(task)
        try:
            scored = score_file(fmt, predictions, answer_match.value)
        except PredictionsFileError as error:
            raise typer.BadParameter(str(error), param_hint="PREDICTIONS") from None
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--answer-match") from None
        if correlations is not None and not roscoe:
            raise typer.BadParameter("needs --roscoe", param_hint="--correlations")
        if roscoe:
            _add_roscoe(predictions, scored, roscoe_families, correlations)
        per_example_scores = [example.scores for example in scored]
        means = aggregate(per_example_scores)
        counts = count_scored(per_example_scores)
        if per_example is not None:
            _write_per_example(per_example, scored)
        if as_json:
            summary = {"n": len(scored), "answer_match": answer_match.value, "metrics": means}
            typer.echo(json.dumps({**summary, "counts": counts}))
        else:
            _print_table(task, fmt, len(scored), means, counts)


def _check_outputs(predictions: Path, outputs: dict[str, Path | None]) -> None:
    """An output file is never the predictions file read, nor another output, nor a folder."""
    seen: dict[Path, str] = {predictions.resolve(): "PREDICTIONS"}
    for flag, path in outputs.items():
        if path is None:
            continue
        if path.is_dir():
            raise typer.BadParameter(f"{path} is a folder; give a file to write", param_hint=flag)
        other = seen.setdefault(path.resolve(), flag)
        if other != flag:
            raise typer.BadParameter(
                f"{path} is also {other}: writing it would replace that file; give another file",
                param_hint=flag,
            )


def _task_answer_format(task: str) -> str:
    try:
        from seglm.tasks import get_task
    except ImportError:
        raise typer.BadParameter(
            f"cannot look up task {task!r}: seglm.tasks is not available; pass --format",
            param_hint="TASK",
        ) from None
    try:
        return str(get_task(task).answer_format)
    except (LookupError, ValueError) as error:
        raise typer.BadParameter(
            f"unknown task {task!r} ({error}); or pass --format", param_hint="TASK"
        ) from None


def _add_roscoe(
    path: Path, scored: list[ScoredExample], families: str | None, correlations: Path | None
) -> None:
    from seglm.commands import roscoe_config
    from seglm.json_lines import iter_jsonl
    from seglm.metrics.correlations import pearson_correlations, render_correlations
    from seglm.metrics.roscoe import add_roscoe_scores
    from seglm.tasks.base import question_of_prompt

    by_line = dict(iter_jsonl(path))
    records = []
    for example in scored:
        record = by_line[example.line]
        source = record.get("source", record.get("question"))
        if source is None and isinstance(record.get("prompt"), str):  # seglm eval's own file
            source = question_of_prompt(record["prompt"])
        if not isinstance(source, str):
            raise typer.BadParameter(
                f"{path}, line {example.line}: --roscoe needs the question text as a string "
                "field 'source' (or 'question', or seglm's 'prompt')",
                param_hint="PREDICTIONS",
            )
        records.append({"source": source, "prediction": record["prediction"]})
    config = roscoe_config(families)
    add_roscoe_scores(records, config)
    for example, record in zip(scored, records, strict=True):
        example.scores.update({name: record[name] for name in config.scores})
    if correlations is not None:
        columns = (*config.scores, "exact_match", "iou")
        result = pearson_correlations([example.scores for example in scored], columns)
        correlations.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        render_correlations(result)


def _write_per_example(path: Path, scored: list[ScoredExample]) -> None:
    try:
        with path.open("w", encoding="utf-8") as out:
            for example in scored:
                out.write(json.dumps({"line": example.line, **example.scores}) + "\n")
    except OSError as error:
        raise typer.BadParameter(
            f"cannot write {path}: {error.strerror}", param_hint="--per-example"
        ) from None


def _print_table(
    task: str, fmt: str, n: int, means: dict[str, float], counts: dict[str, int]
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "mean", "examples", title=f"{task} ({fmt}), {n} predictions")
    for name, count in counts.items():
        mean = f"{means[name]:.4f}" if name in means else "n/a"
        table.add_row(name, mean, str(count))
    Console().print(table)
