"""``seglm compare [GRID.yaml] --out RUNS``: train and evaluate a grid of losses x λ x seeds.

Flags override the grid file's values; without a file they define the grid, e.g.
``seglm compare --task arith --losses ce,focal,lovasz --lambdas 0.6 --seeds 3 --out runs/arith``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from seglm.losses.registry import loss_names

if TYPE_CHECKING:
    from seglm.cluster import SlurmSettings
    from seglm.experiments import CellOutcome, Grid, GridRun


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare_command(
        grid_file: Annotated[
            Path | None,
            typer.Argument(metavar="[GRID.yaml]", help="Grid file (docs/experiments.md)."),
        ] = None,
        out: Annotated[Path, typer.Option("--out", help="Runs folder of the grid.")] = Path(
            "runs/compare"
        ),
        task: Annotated[str | None, typer.Option(help="Task(s), comma-separated.")] = None,
        model: Annotated[str | None, typer.Option(help="Model(s), comma-separated.")] = None,
        losses: Annotated[
            str | None,
            typer.Option(
                help=f"Losses, comma-separated, each trained as λ·CE + (1 − λ)·loss: "
                f"{','.join(loss_names())} (seglm losses describes them)."
            ),
        ] = None,
        lambdas: Annotated[
            str | None, typer.Option(help="Weights of CE, comma-separated (default 0.6).")
        ] = None,
        arm: Annotated[
            list[str] | None,
            typer.Option(
                "--arm",
                help="A named arm NAME:SPEC (repeatable), e.g. control:ce=0.6,ce@answer=0.4.",
            ),
        ] = None,
        seeds: Annotated[
            str | None,
            typer.Option(help="A count N (seeds 0..N-1) or a list: 42,43 (one seed: 42,)."),
        ] = None,
        base: Annotated[
            bool | None,
            typer.Option("--base/--no-base", help="Also evaluate the untrained model."),
        ] = None,
        train: Annotated[
            list[str] | None,
            typer.Option(
                "--train",
                help="Shared training setting key=value (repeatable), e.g. max_steps=200.",
            ),
        ] = None,
        preset: Annotated[
            str | None, typer.Option(help="Training preset, e.g. paper-gsm8k.")
        ] = None,
        eval_split: Annotated[str | None, typer.Option(help="Split to evaluate on.")] = None,
        eval_limit: Annotated[
            int | None, typer.Option(help="Evaluate the first N examples.")
        ] = None,
        max_new_tokens: Annotated[int | None, typer.Option(help="Generation length.")] = None,
        eval_dtype: Annotated[
            str | None,
            typer.Option(help="fp32, bf16, fp16 or auto (bf16 where the hardware has it)."),
        ] = None,
        eval_batch_size: Annotated[int | None, typer.Option(help="Evaluation batch size.")] = None,
        shard: Annotated[
            str, typer.Option(help="i/n: run every n-th cell from the i-th (one process per GPU).")
        ] = "0/1",
        workers: Annotated[
            int,
            typer.Option(
                min=1,
                help="Cells side by side, each in a process of its own with an equal share of "
                "the CPU cores (on a CPU machine, 2 trains faster than 1).",
            ),
        ] = 1,
        launcher: Annotated[
            str | None,
            typer.Option(
                help="none (cells one by one here) or submitit (one Slurm array task per cell; "
                "default: the grid file's launcher, else none)."
            ),
        ] = None,
        slurm: Annotated[
            list[str] | None,
            typer.Option(
                "--slurm",
                help="A submitit setting KEY=VALUE (repeatable), e.g. partition=gpu, "
                "gpus_per_task=1, timeout_min=240, array_parallelism=8, cluster=local.",
            ),
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="List the cells and their status; run nothing.")
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    ) -> None:
        """Fine-tune one model with CE and with each loss, evaluate each run, and summarise."""
        from seglm.experiments import GridError, parse_shard

        console = Console(stderr=True)
        overrides = {
            "tasks": task,
            "models": model,
            "losses": losses,
            "lambdas": lambdas,
            "seeds": seeds,
            "base": base,
        }
        eval_overrides = {
            "split": eval_split,
            "limit": eval_limit,
            "max_new_tokens": max_new_tokens,
            "dtype": eval_dtype,
            "batch_size": eval_batch_size,
        }
        try:
            grid = build_grid(grid_file, overrides, eval_overrides, train or [], preset, arm or [])
            shard_index = parse_shard(shard)
            settings = launch_settings(grid_file, launcher, slurm or [], shard_index)
            if settings is not None and workers > 1:
                raise GridError(
                    "--workers and --launcher submitit exclude each other: submitit runs the "
                    "cells as jobs of their own (array_parallelism: how many at once)"
                )
            if dry_run:
                print_cells(grid, out)
                if settings is not None:
                    console.print(f"submitit: {settings.describe()}", highlight=False)
                return
            if settings is not None:
                outcome = run_on_cluster(grid, out, settings, console)
            else:
                outcome = run(grid, out, shard_index, quiet, console, workers)
        except GridError as error:
            console.print(f"[red]error:[/red] {error}", highlight=False)
            raise typer.Exit(1) from None
        if outcome.count("failed"):
            raise typer.Exit(1)


def build_grid(
    grid_file: Path | None,
    overrides: dict[str, Any],
    eval_overrides: dict[str, Any],
    train_items: list[str],
    preset: str | None,
    arm_items: Sequence[str] = (),
) -> Grid:
    """The grid file's values (or the defaults: arith, smollm2-135m-instruct), then the flags."""
    from seglm.experiments import Grid, GridError, read_grid_values
    from seglm.schema import ConfigError, read_items

    if grid_file is None:
        values: dict[str, Any] = {"tasks": ["arith"], "models": ["smollm2-135m-instruct"]}
    else:
        values = read_grid_values(grid_file)
    for key, value in overrides.items():
        if value is not None:
            values.pop(key.removesuffix("s"), None)  # --task replaces the file's task or tasks
            values[key] = value
    where = str(grid_file) if grid_file is not None else "command line"
    for key in ("train", "eval"):
        if not isinstance(values.get(key) or {}, dict):
            raise GridError(f"{where}: {key}: expected a mapping of settings, got {values[key]!r}")
    values["eval"] = {
        **(values.get("eval") or {}),
        **{key: value for key, value in eval_overrides.items() if value is not None},
    }
    try:
        train = {**(values.get("train") or {}), **read_items(train_items, "--train")}
    except ConfigError as error:
        raise GridError(str(error)) from None
    if preset is not None:
        train["preset"] = preset
    values["train"] = train
    arms = values.get("arms") or {}
    if arm_items and not isinstance(arms, dict):
        raise GridError(f"{grid_file}: arms: expected a mapping of name: loss spec")
    for item in arm_items:
        name, sep, spec = item.partition(":")
        if not sep or not name.strip() or not spec.strip():
            raise GridError(f"--arm expects NAME:SPEC (e.g. ce-answer:ce@answer=1), got {item!r}")
        arms[name.strip()] = spec.strip()
    if arms:
        values["arms"] = arms
    return Grid.from_dict(values, where)


def launch_settings(
    grid_file: Path | None, launcher: str | None, items: list[str], shard: tuple[int, int]
) -> SlurmSettings | None:
    """The submitit settings when the grid runs through submitit (--launcher, else the grid
    file's ``launcher:``), from the file's ``slurm:`` mapping and the --slurm items."""
    from seglm.cluster import LAUNCHERS, parse_settings
    from seglm.experiments import GridError, read_grid_values

    values = read_grid_values(grid_file) if grid_file is not None else {}
    chosen = launcher if launcher is not None else values.get("launcher", "none")
    if chosen not in LAUNCHERS:
        raise GridError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {chosen!r}")
    slurm = values.get("slurm")
    if slurm is not None and not isinstance(slurm, dict):
        raise GridError(f"{grid_file}: slurm: expected a mapping of settings, got {slurm!r}")
    if chosen == "none":
        if items:
            raise GridError("--slurm settings need --launcher submitit")
        return None
    if shard != (0, 1):
        raise GridError(
            "--shard and --launcher submitit exclude each other: submitit runs every cell as "
            "its own array task"
        )
    return parse_settings(slurm, items)


def _announcer(console: Console) -> Any:
    def announce(position: int, total: int, outcome: CellOutcome) -> None:
        colour = {"finished": "green", "skipped": "dim", "busy": "yellow", "failed": "red"}[
            outcome.status
        ]
        detail = f" in {outcome.seconds:.0f} s" if outcome.status == "finished" else ""
        detail += f", repaired ({outcome.repaired})" if outcome.repaired else ""
        detail += f": {outcome.error}" if outcome.error else ""
        console.print(
            f"[{position}/{total}] {outcome.cell.relative_dir}: "
            f"[{colour}]{outcome.status}[/{colour}]{detail}",
            highlight=False,
        )

    return announce


def _report(result: GridRun, out: Path, console: Console) -> None:
    busy = f"{result.count('busy')} run by another process, " if result.count("busy") else ""
    console.print(
        f"{result.count('finished')} cells run, {result.count('skipped')} already finished, "
        f"{busy}{result.count('failed')} failed, in {result.seconds:.0f} s. Summary: "
        f"{out / 'summary.csv'}; report: seglm report {out}",
        highlight=False,
    )


def run(
    grid: Grid,
    out: Path,
    shard: tuple[int, int],
    quiet: bool,
    console: Console,
    workers: int = 1,
) -> GridRun:
    from seglm.experiments import run_grid

    result = run_grid(
        grid, out, progress=not quiet, shard=shard, workers=workers, on_cell=_announcer(console)
    )
    _report(result, out, console)
    return result


def run_on_cluster(grid: Grid, out: Path, settings: SlurmSettings, console: Console) -> GridRun:
    from seglm.cluster import run_grid_submitit

    def submitted(cluster: str, count: int) -> None:
        console.print(
            f"submitting {count} cell(s) to submitit ({cluster}) and waiting for them "
            f"(logs in {settings.folder or out / 'submitit'})",
            highlight=False,
        )

    result = run_grid_submitit(
        grid, out, settings, on_cell=_announcer(console), on_submit=submitted
    )
    _report(result, out, console)
    return result


def print_cells(grid: Grid, out: Path) -> None:
    from rich.table import Table

    from seglm.experiments import cell_folder, cell_status

    cells = grid.cells()
    table = Table("cell", "status", title=f"{len(cells)} cells in {out}")
    for cell in cells:
        table.add_row(str(cell.relative_dir), cell_status(cell_folder(out, cell)))
    Console().print(table)
