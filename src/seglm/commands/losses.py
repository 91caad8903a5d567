"""``seglm losses``: list the losses and check a loss spec."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command("losses")
    def losses_command(
        spec: str = typer.Argument(None, help='A loss spec to check, e.g. "ce=0.6,lovasz=0.4".'),
    ) -> None:
        """List the available losses, or parse SPEC and show its weights."""
        from seglm.losses.objective import ALIASES, LOSS_NAMES, Objective

        console = Console()
        if spec:
            try:
                objective = Objective.from_spec(spec)
            except ValueError as error:
                raise typer.BadParameter(str(error), param_hint="SPEC") from None
            table = Table("term", "weight", "averaged over")
            for name, weight in objective.weights.items():
                tokens = "prompt and answer" if objective.scope(name) == "all" else "answer"
                table.add_row(name, f"{weight:g}", f"{tokens} tokens")
            console.print(table)
            return
        table = Table("loss", "aliases")
        for name in LOSS_NAMES:
            table.add_row(name, ", ".join(a for a, n in ALIASES.items() if n == name))
        console.print(table)
