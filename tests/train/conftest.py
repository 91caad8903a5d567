"""Fixtures for the training tests: a tiny model folder and a small arith config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every training test steps a tiny model."""


@pytest.fixture
def tiny_config(tiny_model: Path, tmp_path: Path) -> dict[str, Any]:
    """A few steps of LoRA on a small arith set; tests override what they check."""
    return {
        "model": str(tiny_model),
        "task": "arith",
        "task_options": {"train_size": 24, "validation_size": 8, "test_size": 4},
        "max_length": 96,
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "eval_split": "none",
        "save_steps": 2,
        "logging_steps": 1,
        "output_dir": str(tmp_path / "run"),
    }
