"""``seglm report RUNS``: report.md, report.json and figures for a ``seglm compare`` folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from seglm.schema import SEED_MAX

if TYPE_CHECKING:
    from seglm.report import Report


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_command(
        runs: Annotated[
            Path,
            typer.Argument(
                metavar="RUNS_DIR", help="Runs folder of `seglm compare` (holds grid.json)."
            ),
        ],
        out: Annotated[
            Path | None,
            typer.Option(
                help="Folder for report.md, report.json and figures/ (default: RUNS_DIR): a new "
                "or empty folder, or one seglm made; only seglm's own files there are replaced."
            ),
        ] = None,
        resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 2000,
        seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the bootstrap.")] = 0,
        data_dir: Annotated[
            Path | None,
            typer.Option(
                help="Folder with the task's data files, for the training split's most common "
                "answer (multiple choice; default: $SEGLM_DATA_DIR, else the hub)."
            ),
        ] = None,
        roscoe: Annotated[
            bool,
            typer.Option(
                "--roscoe",
                help="First score the predictions with ROSCOE (embedding scores; written to "
                "each cell's roscoe.jsonl) for the correlation heatmap.",
            ),
        ] = False,
    ) -> None:
        """Tables with 95% intervals, paired tests against each baseline with the smallest
        difference they could detect, collapsed arms, and figures."""
        from seglm.experiments import GridError
        from seglm.grid_roscoe import score_roscoe
        from seglm.report import build_report

        console = Console(stderr=True)
        try:
            if roscoe:
                score_roscoe(runs)
            report = build_report(runs, out, resamples=resamples, seed=seed, data_dir=data_dir)
        except GridError as error:
            console.print(f"[red]error:[/red] {error}", highlight=False)
            raise typer.Exit(1) from None
        print_report(report)
        damaged = [row for row in report.rows if row["status"] == "damaged"]
        for row in damaged:
            console.print(
                f"[red]damaged[/red], left out: {row['dir']}: {row['error']}", highlight=False
            )
        if damaged:
            console.print(
                f"{len(damaged)} damaged cell(s) left out of the report; `seglm compare` on the "
                "grid repairs them",
                highlight=False,
            )
            raise typer.Exit(1)


# Written to a log or a pipe, the table is not wrapped to 80 columns (Rich's default there).
LOG_WIDTH = 160


def print_report(report: Report, console: Console | None = None) -> None:
    """The tables of each group (estimates, answers, then each arm against each baseline, with
    collapsed arms marked), the best constant answer, the headline statistic and the report's
    path."""
    from rich.markup import escape
    from rich.table import Table

    from seglm.report import group_tables, headline_text
    from seglm.report.render import constant_text

    console = console or Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    for group_report in report.groups:
        for found in group_tables(group_report):
            table = Table(title=escape(found.caption))
            for index, name in enumerate(found.header):
                table.add_column(escape(name), no_wrap=index == 0)
            for row in found.rows:  # "[collapsed]" is text, not Rich markup
                table.add_row(*(escape(cell.replace("**", "")) for cell in row))
            console.print(table)
        collapsed = ", ".join(group_report.collapsed) or "none"
        console.print(f"collapsed arms: {collapsed}", highlight=False)
        if group_report.constant is not None:
            text = constant_text(group_report.constant, len(group_report.group.ids))
            console.print(text.replace("`", ""), highlight=False)
        console.print(headline_text(group_report.headline).replace("**", "").replace("`", ""))
    console.print(f"report: {report.path}", highlight=False)
