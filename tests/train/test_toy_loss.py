"""A loss is one file: the toy in toy_loss.py, imported and nothing else edited, trains through
``seglm train`` (fused, with an option written in the spec) and keeps the loss contract."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from seglm.cli import app
from seglm.config import load_run_config
from seglm.losses import registry, token_loss
from tests.losses._helpers import assert_matches_reference, per_token_reference, random_inputs

from ._helpers import log_events


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Import the toy's file (it registers itself) into a copy of the registry, so that the
    other tests see only seglm's own losses."""
    registry.terms()  # the built-in losses first
    monkeypatch.setattr(registry, "_TERMS", dict(registry._TERMS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    sys.modules.pop("tests.train.toy_loss", None)
    importlib.import_module("tests.train.toy_loss")
    yield
    sys.modules.pop("tests.train.toy_loss", None)


def test_the_toy_matches_its_brute_force(toy_registered: None) -> None:
    logits, targets = random_inputs(seed=3)
    assert_matches_reference(
        lambda x, y: token_loss("toy", x, y, scale=3.0),
        lambda x, y: per_token_reference(x, y, lambda p, rest: 3.0 * torch.log(p) ** 2 / 2),
        logits,
        targets,
    )


def test_the_toy_trains_through_seglm_train(
    toy_registered: None, tiny_config: dict[str, Any]
) -> None:
    options = {**tiny_config, "loss": "ce=0.5,toy(scale=2)=0.5"}
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else [value]
        for item in items:
            args += [flag, str(item)]
    result = CliRunner().invoke(app, ["train", "--quiet", *args])
    assert result.exit_code == 0, result.output
    run_dir = Path(tiny_config["output_dir"])
    assert str(load_run_config(run_dir).loss) == "ce=0.5,toy(scale=2)=0.5"
    events = log_events(run_dir)
    assert all(event["loss_toy"] > 0 for event in events if "loss_toy" in event)
    first, last = events[0]["loss_toy"], [e for e in events if "loss_toy" in e][-1]["loss_toy"]
    assert last < first
