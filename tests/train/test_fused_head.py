"""The fused head in training: the same steps as the materialised path, refusals, and saving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig, AutoModelForCausalLM

from seglm.config import ConfigError, resolve_config
from seglm.fused_head import (
    FUSED_HEAD_MODEL_TYPES,
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


TINY = {
    "vocab_size": 50,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
}


def tiny_model(model_type: str, **config: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**TINY, **config}))


def check_fused_equals_materialised(reference: Any, fused: Any, objective: Objective) -> None:
    """Loss, components and every trainable gradient of the fused head equal the objective of
    the logits the model's own forward returns (whatever it does after its head)."""
    data = batch(vocab=50)
    torch.manual_seed(1)  # the same dropout masks in both
    expected = objective(reference(input_ids=data["input_ids"]).logits, data["labels"],
                         data["answer_mask"])  # fmt: skip
    expected.loss.backward()
    head = install_fused_head(fused, objective, chunk_size=5)
    torch.manual_seed(1)
    with head.computing_loss(data["labels"], data["answer_mask"]):
        loss = fused(input_ids=data["input_ids"]).logits
    got = head.take_output()
    torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=1e-6)
    for name, value in expected.components.items():
        torch.testing.assert_close(got.components[name], value, rtol=1e-5, atol=1e-6)
    loss.backward()
    trained = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    assert trained
    for (name, p_ref), p_fused in zip(
        trained, [p for p in fused.parameters() if p.requires_grad], strict=True
    ):
        torch.testing.assert_close(p_fused.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("model_type", sorted(FUSED_HEAD_MODEL_TYPES))
def test_every_allowed_architecture_is_checked_against_its_own_logits(model_type: str) -> None:
    objective = Objective.from_spec("ce=0.5,focal=0.2,lovasz=0.3")
    reference, fused = tiny_model(model_type), tiny_model(model_type)
    assert fused_head_blocker(fused) is None
    check_fused_equals_materialised(reference, fused, objective)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_on_the_output_layer_is_fused_with_the_same_gradients(dropout: float) -> None:
    # The paper's Llama / StableLM setting: LoRA on lm_head too.
    def lora_model() -> Any:
        config = LoraConfig(
            r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "lm_head"]
        )
        model = get_peft_model(tiny_llama(vocab_size=50, hidden_size=32), config)
        for name, value in model.named_parameters():  # LoRA B starts at zero: make it matter
            if "lora_B" in name:
                torch.nn.init.normal_(value, std=0.1, generator=torch.Generator().manual_seed(2))
        return model.train()

    reference, fused = lora_model(), lora_model()
    head = fused.get_base_model().lm_head
    assert fused_head_blocker(fused) is None
    check_fused_equals_materialised(reference, fused, Objective.from_spec("ce=0.6,lovasz=0.4"))
    # The layer stays the PEFT module; removing the fused head gives it its own forward back.
    assert fused.get_base_model().lm_head is head and "forward" in vars(head)
    remove_fused_head(fused)
    assert "forward" not in vars(head)
    ids = batch(vocab=50)["input_ids"]
    torch.testing.assert_close(
        fused.eval()(input_ids=ids).logits, reference.eval()(input_ids=ids).logits
    )


class ProducedShapes(TorchDispatchMode):
    """Records the shape of every tensor any operation produces."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.shapes.add(tuple(tensor.shape))
        return out


def test_lora_on_the_output_layer_computes_nothing_for_the_frozen_weight() -> None:
    """Only the adapter's [V, r] gradient is computed: no copy of the frozen [V, H] weight
    (widened to [V, H + r]) and no gradient of it exist while the fused LoRA head trains."""
    model = get_peft_model(
        tiny_llama(vocab_size=50, hidden_size=32), LoraConfig(r=4, target_modules=["lm_head"])
    )
    head = install_fused_head(model, Objective.from_spec("ce=0.6,lovasz=0.4"), chunk_size=5)
    data = batch(vocab=50)
    with head.computing_loss(data["labels"], data["answer_mask"]), ProducedShapes() as probe:
        model(input_ids=data["input_ids"]).logits.backward()
    widest = max(shape[1] for shape in probe.shapes if len(shape) == 2 and shape[0] == 50)
    assert widest < 32  # the adapter's [V, 4], chunks' transposed [V, 5] logits
    lora_b = model.get_base_model().lm_head.lora_B["default"].weight
    assert lora_b.grad is not None and lora_b.grad.abs().max() > 0


def test_blockers_name_the_reason() -> None:
    assert fused_head_blocker(tiny_llama(vocab_size=40, hidden_size=32)) is None
    # Falcon-H1 multiplies its logits by lm_head_multiplier after the head: a denylist of
    # config attributes missed it, the allow-list does not fuse what it has not checked.
    falcon_h1 = tiny_model("falcon_h1", lm_head_multiplier=0.5)
    ids = batch(vocab=50)["input_ids"]
    hidden = falcon_h1.model(input_ids=ids).last_hidden_state
    assert not torch.allclose(falcon_h1(input_ids=ids).logits, falcon_h1.lm_head(hidden))
    assert "model type 'falcon_h1' is not one the fused loss is tested on" in str(
        fused_head_blocker(falcon_h1)
    )
    with pytest.raises(ValueError, match="cannot be used: model type 'falcon_h1'"):
        install_fused_head(falcon_h1, Objective.from_spec("ce"))
    dora = get_peft_model(
        tiny_llama(vocab_size=40, hidden_size=32),
        LoraConfig(r=2, target_modules=["lm_head"], use_dora=True),
    )
    assert "is a variant (DoraLinearVariant)" in str(fused_head_blocker(dora))
    biased = get_peft_model(
        tiny_llama(vocab_size=40, hidden_size=32),
        LoraConfig(r=2, target_modules=["lm_head"], lora_bias=True),
    )
    assert "has a bias (lora_bias)" in str(fused_head_blocker(biased))


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
    config = {
        **tiny_config,
        "adapter": "full",
        "loss": "ce=0.6,focal=0.4",
        "max_steps": 2,
        "optim": "sgd",  # see test_lora_on_the_head_trains_fused_to_the_same_adapter
        "learning_rate": 0.5,
    }
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


def test_lora_on_the_head_trains_fused_to_the_same_adapter(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    # Plain SGD: Adam's first steps are lr * sign(gradient), which turns float rounding in a
    # near-zero gradient into a full-size difference.
    config = {
        **tiny_config,
        "target_modules": ["q_proj", "lm_head"],
        "lora_dropout": 0.0,
        "optim": "sgd",
        "learning_rate": 0.5,
    }
    fused = run(config, output_dir=str(tmp_path / "fused"))  # auto
    plain = run(config, fused_loss=False, output_dir=str(tmp_path / "plain"))
    assert fused.report["fused_loss"] is True and "fused_loss_unavailable" not in fused.report
    expected = load_file(plain.run_dir / "adapter_model.safetensors")
    got = load_file(fused.run_dir / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and any("lm_head.lora_B" in k for k in got)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_an_architecture_not_checked_trains_on_materialised_logits(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    from ._helpers import char_tokenizer

    folder = tmp_path / "tiny-gemma2"
    tokenizer = char_tokenizer()
    model = tiny_model("gemma2", vocab_size=len(tokenizer), pad_token_id=0)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = {**tiny_config, "model": str(folder), "max_steps": 1}
    with pytest.raises(ValueError, match="model type 'gemma2' is not one the fused loss is tested"):
        run(config, fused_loss=True, output_dir=str(tmp_path / "forced"))
    auto = run(config, output_dir=str(tmp_path / "auto"))
    assert auto.report["fused_loss"] is False
    report = json.loads((auto.run_dir / "train_report.json").read_text())
    assert (
        "model type 'gemma2' is not one the fused loss is tested on"
        in report["fused_loss_unavailable"]
    )


def test_fused_loss_is_not_part_of_a_runs_identity(tiny_config: dict[str, Any]) -> None:
    # A run started materialised may resume fused: the maths is the same.
    first = resolve_config(overrides={**tiny_config, "fused_loss": False})
    second = resolve_config(overrides={**tiny_config, "fused_loss": True})
    assert first.identity() == second.identity()
    with pytest.raises(ConfigError, match="fused_loss"):
        resolve_config(overrides={**tiny_config, "fused_loss": "sometimes"})
