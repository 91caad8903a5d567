"""The fused head in training: the same steps as the materialised path, refusals, and saving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from seglm.config import ConfigError, resolve_config
from seglm.fused_head import (
    FusedObjectiveHead,
    fused_head_blocker,
    install_fused_head,
    remove_fused_head,
)
from seglm.losses import Objective
from seglm.models import tiny_llama
from seglm.train import train

from ._helpers import log_events


def run(config: dict[str, Any], **overrides: Any) -> Any:
    return train(resolve_config(overrides={**config, **overrides}), progress=False)


def batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(vocab, (3, 12), generator=generator)
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[2, 9:] = -100  # padding
    answer_mask = torch.zeros_like(labels, dtype=torch.bool)
    answer_mask[:, 7:] = True
    return {"input_ids": input_ids, "labels": labels, "answer_mask": answer_mask}


@pytest.mark.parametrize("spec", ["ce=0.6,lovasz=0.4", "ce=0.5,focal=0.3,gdice=0.2"])
def test_head_gives_the_objective_of_the_materialised_logits_and_the_same_gradients(
    spec: str,
) -> None:
    objective = Objective.from_spec(spec)
    data = batch(vocab=50)
    reference = tiny_llama(vocab_size=50, hidden_size=32)
    fused = tiny_llama(vocab_size=50, hidden_size=32)
    logits = reference(input_ids=data["input_ids"]).logits
    expected = objective(logits, data["labels"], data["answer_mask"])
    expected.loss.backward()

    head = install_fused_head(fused, objective, chunk_size=5)
    assert isinstance(fused.lm_head, FusedObjectiveHead)
    assert fused.lm_head.weight is fused.model.embed_tokens.weight  # still tied
    with head.computing_loss(data["labels"], data["answer_mask"]):
        loss = fused(input_ids=data["input_ids"]).logits
    got = head.take_output()
    assert loss is got.loss
    torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=1e-6)
    for name, value in expected.components.items():
        torch.testing.assert_close(got.components[name], value, rtol=1e-5, atol=1e-6)
    loss.backward()
    for (name, p_ref), p_fused in zip(
        reference.named_parameters(), fused.parameters(), strict=True
    ):
        torch.testing.assert_close(p_fused.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Outside computing_loss the head is the plain layer again.
    torch.testing.assert_close(fused(input_ids=data["input_ids"]).logits, logits)
    with pytest.raises(RuntimeError, match="computing_loss"):
        head.take_output()


def test_removing_the_head_restores_a_plain_linear_with_the_same_parameters() -> None:
    model = tiny_llama(vocab_size=40, hidden_size=32)
    weight = model.lm_head.weight
    install_fused_head(model, Objective.from_spec("ce"))
    remove_fused_head(model)
    assert type(model.lm_head) is torch.nn.Linear
    assert model.lm_head.weight is weight and model.lm_head.weight.device.type == "cpu"


def test_blockers_name_the_reason() -> None:
    model = tiny_llama(vocab_size=40, hidden_size=32)
    assert fused_head_blocker(model) is None
    with_lora_head = get_peft_model(
        tiny_llama(vocab_size=40, hidden_size=32),
        LoraConfig(r=2, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"),
    )
    assert "not a plain torch.nn.Linear" in str(fused_head_blocker(with_lora_head))
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping=30.0" in str(fused_head_blocker(model))
    with pytest.raises(ValueError, match="cannot be used: the model transforms its logits"):
        install_fused_head(model, Objective.from_spec("ce"))


def test_fused_and_materialised_training_reach_the_same_adapter(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**tiny_config, "loss": "ce=0.6,lovasz=0.4", "lora_dropout": 0.0}
    fused = run(config, fused_loss=True, output_dir=str(tmp_path / "fused"))
    plain = run(config, fused_loss=False, output_dir=str(tmp_path / "plain"))
    assert fused.report["fused_loss"] is True and plain.report["fused_loss"] is False
    expected = load_file(plain.run_dir / "adapter_model.safetensors")
    got = load_file(fused.run_dir / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    assert any(v.abs().sum() > 0 for k, v in got.items() if "lora_B" in k)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=name)

    def logged(folder: Path) -> list[float]:
        return [e[k] for e in log_events(folder) if "loss" in e for k in ("loss_ce", "loss_lovasz")]

    assert logged(fused.run_dir) == pytest.approx(logged(plain.run_dir), rel=1e-4)


def test_full_fine_tuning_trains_the_tied_head_and_saves_a_plain_model(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**tiny_config, "adapter": "full", "loss": "ce=0.6,focal=0.4", "max_steps": 2}
    fused = run(config, output_dir=str(tmp_path / "fused"))  # auto: the tiny Llama allows it
    plain = run(config, fused_loss=False, output_dir=str(tmp_path / "plain"))
    assert fused.report["fused_loss"] is True
    expected = load_file(plain.run_dir / "model.safetensors")
    got = load_file(fused.run_dir / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=name)
    reloaded = AutoModelForCausalLM.from_pretrained(fused.run_dir)
    assert type(reloaded.lm_head) is torch.nn.Linear
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_fused_loss_on_a_model_that_does_not_allow_it(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**tiny_config, "target_modules": ["q_proj", "lm_head"], "max_steps": 1}
    with pytest.raises(ValueError, match=r"not a plain torch\.nn\.Linear"):
        run(config, fused_loss=True, output_dir=str(tmp_path / "forced"))
    auto = run(config, output_dir=str(tmp_path / "auto"))
    assert auto.report["fused_loss"] is False
    report = json.loads((auto.run_dir / "train_report.json").read_text())
    assert "not a plain torch.nn.Linear" in report["fused_loss_unavailable"]


def test_fused_loss_is_not_part_of_a_runs_identity(tiny_config: dict[str, Any]) -> None:
    # A run started materialised may resume fused: the maths is the same.
    first = resolve_config(overrides={**tiny_config, "fused_loss": False})
    second = resolve_config(overrides={**tiny_config, "fused_loss": True})
    assert first.identity() == second.identity()
    with pytest.raises(ConfigError, match="fused_loss"):
        resolve_config(overrides={**tiny_config, "fused_loss": "sometimes"})
