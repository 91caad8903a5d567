"""``seglm eval MODEL [--task TASK] [--split SPLIT] ...``: evaluate a model, a model plus a LoRA
adapter, or a seglm run folder on a task split (docs/evaluation.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from seglm.commands import ANSWER_MATCH_HELP, AnswerMatch, choice_enum, roscoe_config
from seglm.config import DTYPES
from seglm.evaluate import SCORINGS

if TYPE_CHECKING:
    from seglm.evaluate import EvalResult

DEFAULT_SEED = 1234  # seglm.evaluate.LM_EVAL_FEWSHOT_SEED; not imported to keep start-up cheap


Scoring = choice_enum("Scoring", SCORINGS)
Dtype = choice_enum("Dtype", DTYPES)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        model: Annotated[
            str,
            typer.Argument(
                metavar="MODEL",
                help="Alias (smollm2-135m-instruct), hub id, model folder, seglm run folder "
                "or one of its checkpoints.",
            ),
        ],
        task: Annotated[
            str | None,
            typer.Option("--task", "-t", help="Task name (default: the run folder's task)."),
        ] = None,
        split: Annotated[str, typer.Option("--split", "-s", help="Split to evaluate.")] = "test",
        output_dir: Annotated[
            Path | None,
            typer.Option(
                "--output-dir",
                help="Where predictions.jsonl and metrics.json go (default: RUN/eval-TASK-SPLIT "
                "for a run folder, else evals/MODEL-TASK-SPLIT). A rerun resumes.",
            ),
        ] = None,
        scoring: Annotated[
            Scoring,
            typer.Option(
                help="generate (greedy + answer extraction), loglik (multiple choice: acc, "
                "acc_norm) or both."
            ),
        ] = Scoring.generate,
        answer_match: Annotated[
            AnswerMatch, typer.Option("--answer-match", help=ANSWER_MATCH_HELP)
        ] = AnswerMatch.seglm,
        limit: Annotated[
            int | None, typer.Option("--limit", "-n", help="Evaluate N examples only.")
        ] = None,
        random_subset: Annotated[
            bool,
            typer.Option("--random-subset", help="Draw the --limit examples at random (--seed)."),
        ] = False,
        seed: Annotated[
            int, typer.Option(help="Seed of --random-subset and of the few-shot exemplars.")
        ] = DEFAULT_SEED,
        batch_size: Annotated[
            int | None,
            typer.Option(help="Sequences per batch (default 32 on CPU, 64 on GPU; halved on OOM)."),
        ] = None,
        dtype: Annotated[Dtype, typer.Option(help="Weights' dtype.")] = Dtype.fp32,
        max_new_tokens: Annotated[
            int | None, typer.Option(help="Generated tokens at most (default: the task's).")
        ] = None,
        num_fewshot: Annotated[
            int, typer.Option(help="Exemplars from the train split before each prompt.")
        ] = 0,
        data_dir: Annotated[
            str | None,
            typer.Option(
                help="Folder with the datasets' files (default $SEGLM_DATA_DIR, else hub)."
            ),
        ] = None,
        adapter: Annotated[
            Path | None, typer.Option(help="PEFT adapter folder to apply to MODEL.")
        ] = None,
        chat_template: Annotated[
            bool,
            typer.Option("--chat-template", help="Wrap prompts in the tokenizer's chat template."),
        ] = False,
        option: Annotated[
            list[str] | None,
            typer.Option("--option", "-o", help="Task option KEY=VALUE, repeatable."),
        ] = None,
        allow_task_mismatch: Annotated[
            bool,
            typer.Option(
                "--allow-task-mismatch",
                help="Evaluate a run on a task whose answer format differs from its own.",
            ),
        ] = False,
        overwrite: Annotated[
            bool,
            typer.Option(
                "--overwrite", help="Start again in an output folder that holds predictions."
            ),
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json.")] = False,
        roscoe: Annotated[
            bool,
            typer.Option("--roscoe", help="Add ROSCOE reasoning-chain scores (generation only)."),
        ] = False,
        roscoe_families: Annotated[
            str | None,
            typer.Option(help="Comma-separated ROSCOE families (default: all four)."),
        ] = None,
        trust_remote_code: Annotated[
            bool,
            typer.Option(
                "--trust-remote-code",
                help="Run the custom model code (auto_map) that MODEL's folder or hub repo "
                "ships. Never taken from a run folder's config.yaml.",
            ),
        ] = False,
    ) -> None:
        """Evaluate MODEL on a task split: predictions.jsonl (resumable) and metrics.json."""
        from seglm.evaluate import evaluate, resolve_model
        from seglm.tasks import parse_option_text, task_class

        try:
            source = resolve_model(model, adapter, trust_remote_code=trust_remote_code)
            task_name = task or (source.run_config.task if source.run_config else None)
            if task_name is None:
                raise ValueError("give --task (MODEL is not a seglm run folder that names one)")
            options = parse_option_text(task_class(task_name), option or [])
            out_dir = output_dir or default_output_dir(
                source.name, source.run_config is not None, task_name, split, scoring, num_fewshot
            )
            result = evaluate(
                model,
                task_name,
                split,
                out_dir,
                task_options=options,
                scoring=scoring.value,
                limit=limit,
                random_subset=random_subset,
                seed=seed,
                batch_size=batch_size,
                dtype=dtype.value,
                max_new_tokens=max_new_tokens,
                num_fewshot=num_fewshot,
                data_dir=data_dir,
                adapter=adapter,
                chat_template=chat_template,
                allow_task_mismatch=allow_task_mismatch,
                overwrite=overwrite,
                progress=not quiet,
                roscoe=_roscoe_config(roscoe, roscoe_families),
                answer_match=answer_match.value,
                trust_remote_code=trust_remote_code,
            )
        except (ValueError, OSError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(result.metrics_path.read_text().strip())
        else:
            _print_summary(result)


def _roscoe_config(enabled: bool, families: str | None) -> Any:
    if not enabled:
        if families:
            raise typer.BadParameter("needs --roscoe", param_hint="--roscoe-families")
        return None
    return roscoe_config(families)


def default_output_dir(
    model_name: str, is_run: bool, task: str, split: str, scoring: Scoring, shots: int
) -> Path:
    """``RUN/eval-TASK-SPLIT`` inside a run folder, else ``evals/MODEL-TASK-SPLIT``; a scoring
    other than generate and few-shot prompts add a suffix."""
    suffix = "" if scoring is Scoring.generate else f"-{scoring.value}"
    suffix += f"-{shots}shot" if shots else ""
    if is_run:
        return Path(model_name) / f"eval-{task}-{split}{suffix}"
    return Path("evals") / f"{Path(model_name).name.lower()}-{task}-{split}{suffix}"


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
