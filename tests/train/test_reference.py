"""Losses that compare with a reference model (ASFT) through seglm train: the reference is the
model before training (LoRA: its adapters disabled; full fine-tuning: a frozen copy), read on
the fused path as on materialised logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from seglm.train import train

from ._helpers import log_events

SPEC = "dft@answer=0.5,asft(alpha=1)@answer=0.5"


def run(tiny_config: dict[str, Any], tmp_path: Path, name: str, **settings: Any) -> Path:
    config = {
        **tiny_config,
        "loss": SPEC,
        "max_steps": 3,
        "lora_dropout": 0.0,
        "output_dir": str(tmp_path / name),
        **settings,
    }
    return train(config, progress=False).run_dir


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "materialised"])
def test_lora_reference_is_the_model_with_adapters_disabled(
    tiny_config: dict[str, Any], tmp_path: Path, fused: bool
) -> None:
    run_dir = run(tiny_config, tmp_path, "lora", fused_loss=fused)
    events = [event for event in log_events(run_dir) if "loss_asft" in event]
    # LoRA starts as the identity (B = 0): at the first step the model is its reference, so
    # ASFT is DFT; once the adapters move, the KL anchor adds to it.
    first, last = events[0], events[-1]
    assert first["loss_asft"] == pytest.approx(first["loss_dft"], abs=2e-6)
    assert last["loss_asft"] > last["loss_dft"] + 1e-6
    report = json.loads((run_dir / "train_report.json").read_text())
    assert report["reference"]["kind"] == "the model with its adapters disabled"
    assert report["fused_loss"] is fused


def test_fused_and_materialised_train_the_same_adapter(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    # Plain SGD (Adam's first steps are lr * sign(gradient), which turns float rounding in a
    # near-zero gradient into a full-size difference), and LoRA on the head too, whose adapters
    # are disabled for the reference like the others.
    settings = {"optim": "sgd", "learning_rate": 0.5, "target_modules": ["q_proj", "lm_head"]}
    folders = [
        run(tiny_config, tmp_path, f"run-{fused}", fused_loss=fused, **settings)
        for fused in (True, False)
    ]
    weights = [load_file(folder / "adapter_model.safetensors") for folder in folders]
    assert any("lm_head.lora_B" in name for name in weights[0])
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_full_fine_tuning_keeps_a_frozen_copy(tiny_config: dict[str, Any], tmp_path: Path) -> None:
    run_dir = run(tiny_config, tmp_path, "full", adapter="full", learning_rate=1e-3)
    report = json.loads((run_dir / "train_report.json").read_text())
    assert report["reference"]["kind"] == "a frozen copy of the model"
    assert report["reference"]["extra_memory_mib"] > 0
    events = [event for event in log_events(run_dir) if "loss_asft" in event]
    assert events[0]["loss_asft"] == pytest.approx(events[0]["loss_dft"], abs=2e-6)
    assert events[-1]["loss_asft"] > events[-1]["loss_dft"] + 1e-6
