"""``seglm losses``: the list, and a spec's terms with the tokens each averages over."""

from __future__ import annotations

from typer.testing import CliRunner

from seglm.cli import app

runner = CliRunner()


def test_lists_every_loss_with_its_aliases_and_options_unbroken_at_80_columns() -> None:
    result = runner.invoke(app, ["losses"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for name in ("ce", "focal", "sadl", "gdice", "lovasz", "dft", "(dynamic_fine_tuning)"):
        assert name in result.output
    assert "gamma=2.0" in result.output and "weighting=square" in result.output


def test_a_spec_shows_each_term_and_its_scope() -> None:
    result = runner.invoke(app, ["losses", "ce=0.6,ce@answer=0.3,lovasz=0.1"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "tokens" in line]
    assert len(rows) == 3
    assert "ce " in rows[0] and "0.6" in rows[0] and "prompt and answer tokens" in rows[0]
    assert "ce@answer" in rows[1] and "0.3" in rows[1] and "prompt" not in rows[1]
    assert "lovasz" in rows[2] and "prompt" not in rows[2]


def test_a_bad_scope_is_refused() -> None:
    result = runner.invoke(app, ["losses", "lovasz@all=1"])
    assert result.exit_code == 2
    assert "set loss" in result.output
