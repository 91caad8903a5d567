"""``seglm compare``, ``seglm report`` and ``seglm demo`` from the command line.

Training and evaluation are stand-ins (grid_fakes) except in the slow end-to-end demo test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from grid_fakes import FakeRuns
from typer.testing import CliRunner

from seglm.cli import app
from seglm.commands.demo import change_from_base, demo_grid, verdicts
from seglm.report import build_report

runner = CliRunner(env={"COLUMNS": "240"})  # room for the wide tables


def plain(output: str) -> str:
    """The output without rich's boxes and line wrapping."""
    return re.sub(r"[\s│╭╮╰╯─┃┏┓┗┛━┡┩└┘┌┐├┤┼┬┴]+", " ", output)


def compare(*args: str) -> object:
    return runner.invoke(app, ["compare", *args])


def test_compare_from_flags_then_report(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns({"ce-lam1": 0.2, "lovasz-lam0.6": 0.5}).install(monkeypatch)
    out = tmp_path / "runs"
    flags = ["--task", "arith", "--model", str(tiny_model), "--losses", "ce,lovasz"]
    flags += ["--seeds", "2", "--eval-limit", "30", "--train", "max_steps=3", "--out", str(out)]
    result = compare(*flags)
    assert result.exit_code == 0, result.output
    assert len(fakes.trained) == 4
    text = plain(result.output)
    assert f"[4/4] arith/{tiny_model.name}/lovasz-lam0.6/seed1: finished" in text
    assert "4 cells run, 0 already finished, 0 failed" in text
    grid = json.loads((out / "grid.json").read_text())
    assert grid["train"]["max_steps"] == 3 and grid["eval"]["limit"] == 30
    assert grid["seeds"] == [0, 1]
    # Rerun: nothing trains.
    again = compare(*flags)
    assert again.exit_code == 0 and "0 cells run, 4 already finished" in plain(again.output)
    assert len(fakes.trained) == 4

    report = runner.invoke(app, ["report", str(out), "--resamples", "200"])
    assert report.exit_code == 0, report.output
    text = plain(report.output)
    assert "lovasz-lam0.6" in text and "EM % [95% CI]" in text
    assert "Relative gain over CE, as the paper reports it" in text
    assert f"report: {out / 'report.md'}" in text
    assert (out / "report.md").is_file()


def test_compare_from_a_grid_file_with_flag_overrides(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"task: arith\nmodel: {tiny_model}\nlosses: [ce, focal, sadl]\nlambdas: [0.6]\n"
        "seeds: [5]\nbase: true\ntrain:\n  max_steps: 2\neval:\n  limit: 4\n"
    )
    out = tmp_path / "runs"
    result = compare(str(grid), "--losses", "ce,gdice", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in fakes.trained) == ["ce-lam1", "gdice-lam0.6"]
    assert fakes.trained[0].name == "seed5"
    assert (out / "arith" / tiny_model.name / "base" / "metrics.json").is_file()


def test_dry_run_lists_cells_and_runs_nothing(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    out = tmp_path / "runs"
    result = compare(
        "--model", str(tiny_model), "--losses", "ce,lovasz", "--lambdas", "0.6,0.8",
        "--arm", "control:ce=0.6,ce@answer=0.4", "--out", str(out), "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "4 cells in" in text and "lovasz-lam0.8/seed0 pending" in text
    assert "control/seed0 pending" in text
    assert fakes.trained == [] and not out.exists()


def test_failed_cell_sets_the_exit_status(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeRuns(fail=lambda arm: arm == "ce-lam1").install(monkeypatch)
    out = tmp_path / "runs"
    result = compare("--model", str(tiny_model), "--losses", "ce,focal", "--out", str(out))
    assert result.exit_code == 1
    text = plain(result.output)
    assert "ce-lam1/seed0: failed: RuntimeError: training of ce-lam1 diverged" in text
    assert "1 cells run, 0 already finished, 1 failed" in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--losses", ""], "empty grid: 'losses' and 'arms' list nothing"),
        (["--losses", "ce,dice"], "unknown loss 'dice'"),
        (["--losses", "ce", "--model", "smollm2-135m-instrct"], "unknown model"),
        (["--losses", "ce", "--seeds", "two"], "key 'seeds[0]' expects an integer, got 'two'"),
        (["--losses", "ce", "--train", "max_steps"], "--train expects key=value"),
        (["--losses", "ce", "--shard", "2/2"], "shard must look like i/n"),
        (["--arm", "ce@answer=1"], "--arm expects NAME:SPEC"),
        (
            ["--arm", "x:ce@answr=1"],
            "arms: x: term 'ce@answr=1': scope 'answr' is not one of all, answer",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    result = compare(*flags, "--out", str(tmp_path / "runs"))
    assert result.exit_code == 1
    assert message in plain(result.output)
    assert fakes.trained == []


def test_incompatible_grid_is_refused(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeRuns().install(monkeypatch)
    out = tmp_path / "runs"
    base = ["--model", str(tiny_model), "--losses", "ce", "--out", str(out)]
    assert compare(*base, "--train", "max_steps=2").exit_code == 0
    result = compare(*base, "--train", "max_steps=9")
    assert result.exit_code == 1
    assert "holds another grid (train.max_steps: 2 -> 9)" in plain(result.output)


def test_report_refuses_a_folder_without_finished_cells(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "holds no grid" in plain(result.output)


def test_demo_grid_scales_with_its_options() -> None:
    grid = demo_grid("ce,lovasz", "2", train_size=64, eval_size=10)
    assert grid.losses == ["ce", "lovasz"] and grid.seeds == [0, 1] and grid.base
    # The weighting control at λ = 0.6 runs next to CE(all) and the loss.
    assert grid.arms == {"control": "ce=0.6,ce@answer=0.4"} and grid.lambdas == [0.6]
    assert [c.arm for c in grid.cells() if c.seed == 0] == ["ce-lam1", "control", "lovasz-lam0.6"]
    assert grid.train["preset"] == "demo"
    assert grid.train["task_options"]["train_size"] == 64
    assert grid.eval.limit == 10 and grid.eval.split == "test"
    assert "task_options" not in demo_grid("ce", "1", None, 10).train


def test_demo_states_the_change_from_the_untrained_model(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeRuns({"base": 0.0, "ce-lam1": 0.5, "lovasz-lam0.6": 1.0}).install(monkeypatch)
    out = tmp_path / "runs"
    flags = ["--model", str(tiny_model), "--losses", "ce,lovasz", "--base", "--out", str(out)]
    assert compare(*flags).exit_code == 0
    line = change_from_base(build_report(out, resamples=100))
    assert line.startswith("exact match, untrained model 0.0% -> fine-tuned: ce-lam1 ")
    assert line.endswith("lovasz-lam0.6 100.0%")


def test_demo_ends_with_each_loss_against_the_control(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeRuns({"ce-lam1": 0.3, "control": 0.3, "lovasz-lam0.6": 0.3}).install(monkeypatch)
    out = tmp_path / "runs"
    flags = ["--model", str(tiny_model), "--losses", "ce,lovasz", "--out", str(out)]
    assert compare(*flags, "--arm", "control:ce=0.6,ce@answer=0.4").exit_code == 0
    report = build_report(out, resamples=100)
    (line,) = verdicts(report)
    (group,) = report.groups
    lovasz = next(s for s in group.stats if s.arm == "lovasz-lam0.6").versus["control"]
    difference, mde = lovasz.differences["exact_match"], lovasz.mde["exact_match"]
    assert line.startswith(
        f"lovasz-lam0.6 against the control (control), exact match: "
        f"{100 * difference.difference:+.1f} [{100 * difference.low:+.1f}, "
        f"{100 * difference.high:+.1f}] points, MDE {100 * mde:.1f}: "
    )
    # One seed of 40 examples, a family of one: MDE = (t(0.975) + t(0.8)) x sd / sqrt(40), t on
    # 39 degrees of freedom.
    assert mde == pytest.approx(2.8736 * difference.standard_error, rel=1e-4)
    assert ("no detectable difference" in line) == (lovasz.holm["exact_match"] >= 0.05)


@pytest.mark.slow
def test_demo_end_to_end_with_the_real_model(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(
        app,
        ["demo", "--losses", "ce,lovasz", "--train-size", "16", "--eval-size", "4",
         "--out", str(out), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "base" in text and "ce-lam1" in text and "lovasz-lam0.6" in text
    assert "against control" in text
    assert f"report: {out / 'report.md'}" in text
    assert "exact match, untrained model" in text
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("lovasz-lam0.6 against the control (control), exact match: ")
    rows = json.loads((out / "summary.json").read_text())["cells"]
    assert [row["status"] for row in rows] == ["finished"] * 4
    assert all(row["n"] == 4 for row in rows)
    assert sorted(p.name for p in (out / "figures").iterdir())[0].endswith(".png")
