"""``seglm losses``: list the losses and their options, or check a loss spec."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command("losses")
    def losses_command(
        spec: str = typer.Argument(
            None, help='A loss spec to check, e.g. "ce=0.6,lovasz=0.4" or "prob(k=10)@answer".'
        ),
        ce_scope: str = typer.Option("all", help="The tokens CE covers without a scope."),
    ) -> None:
        """List the available losses, or parse SPEC and show its terms."""
        from seglm.losses.registry import terms
        from seglm.losses.spec import CE_SCOPES, LossSpec

        console = Console()
        if spec:
            if ce_scope not in CE_SCOPES:
                raise typer.BadParameter(f"one of {', '.join(CE_SCOPES)}", param_hint="--ce-scope")
            try:
                parsed = LossSpec.parse(spec)
            except ValueError as error:
                raise typer.BadParameter(str(error), param_hint="SPEC") from None
            table = Table("term", "weight", "averaged over", "options written")
            for term in parsed.terms:
                scope = term.scope_in(ce_scope)
                tokens = "prompt and answer" if scope == "all" else "answer"
                options = (
                    ", ".join(
                        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in term.options
                    )
                    or "-"
                )
                table.add_row(term.key, f"{term.weight:g}", f"{tokens} tokens", options)
            console.print(table)
            console.print(f"canonical: {parsed}", highlight=False)
            return
        # Names, aliases and options never wrap (users copy them); the summary does.
        table = Table()
        table.add_column("loss (aliases)", no_wrap=True)
        table.add_column("kind", no_wrap=True)
        table.add_column("what it is")
        table.add_column("options", no_wrap=True)
        for term in terms().values():
            names = "\n".join([term.name, *(f"({alias})" for alias in term.aliases)])
            options = "\n".join(f"{name}={option.default}" for name, option in term.options.items())
            table.add_row(names, "set" if term.is_set else "token", term.summary, options or "-")
        console.print(table)
        console.print(
            "A spec weighs terms: ce=0.6,lovasz=0.4; NAME@all / NAME@answer choose the tokens; "
            "NAME(OPTION=VALUE) sets an option for that term; a config file sets it for every "
            "term as NAME_OPTION (focal_gamma: 2). A set loss covers answer tokens only "
            "(docs/method.md).",
            highlight=False,
        )
