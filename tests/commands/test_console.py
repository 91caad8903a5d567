"""What seglm's console shows: its own progress lines and tables, nothing the libraries
underneath print (unless --verbose), and no deprecated name called by seglm itself."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seglm.cli import app


def compare(tiny_model: Path, out: Path, *extra: str, workers: int = 1) -> str:
    args = [
        *extra,
        "compare",
        "--workers", str(workers),
        "--task", "arith",
        "--model", str(tiny_model),
        "--losses", "ce,lovasz",
        "--seeds", "1",
        "--train", "task_options={train_size: 16, validation_size: 4, test_size: 4}",
        "--train", "max_steps=2",
        "--train", "batch_size=4",
        "--train", "logging_steps=1",
        "--train", "eval_split=none",
        "--eval-limit", "2",
        "--max-new-tokens", "4",
        "--out", str(out),
    ]  # fmt: skip
    with warnings.catch_warnings():
        # A deprecated name that seglm itself calls fails the run.
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("error", category=category, module=r"seglm\b")
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_verbose_lets_the_libraries_speak(tiny_model: Path, tmp_path: Path) -> None:
    output = compare(tiny_model, tmp_path / "runs", "--verbose")
    assert "training arith/" in output and "loss " in output  # the rich progress line
    assert "{'loss'" not in output  # the Trainer's printed dicts are gone either way
    assert "[2/2]" in output


def test_a_grid_shows_only_seglms_own_lines(
    tiny_model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Cells side by side (worker processes start with Python's default warnings: they must keep
    the parent's); the workers write to the terminal's file descriptors, not to the runner's
    captured streams, so those are read too. One cell at a time shows its progress line (above)."""
    output = compare(tiny_model, tmp_path / "runs", workers=2)
    output += "".join(capfd.readouterr())
    assert "[2/2]" in output and "finished" in output
    for noise in ("{'loss'", "'grad_norm'", "it/s]", "Warning", "warnings.warn", "[transformers]"):
        assert noise not in output, noise
