"""Drop-in use: ``SegLMLoss`` as a ``compute_loss_func`` in transformers' Trainer and TRL's
SFTTrainer, and ``SegLMTrainer`` with an answer mask, each for a few steps of a tiny model."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from train._helpers import char_tokenizer, one_torch_thread
from transformers import Trainer, TrainingArguments, default_data_collator

from seglm.integrations import SegLMLoss, SegLMTrainer
from seglm.models import tiny_llama

VOCAB = 64
STEPS = 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def token_rows(count: int = 8, length: int = 12) -> list[dict[str, torch.Tensor]]:
    """Fixed-length rows: a prompt (label -100), an answer of varying length, then padding."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(count):
        ids = torch.randint(1, VOCAB, (length,), generator=generator)
        prompt, answer = 4, 2 + i % 5
        attention = torch.zeros(length, dtype=torch.long)
        attention[: prompt + answer] = 1
        labels = torch.full((length,), -100)
        labels[prompt : prompt + answer] = ids[prompt : prompt + answer]
        answer_mask = torch.zeros(length, dtype=torch.long)
        answer_mask[prompt + answer - 2 : prompt + answer] = 1
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": attention,
                "labels": labels,
                "answer_mask": answer_mask,
            }
        )
    return rows


def arguments(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    values: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "max_steps": STEPS,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        # Plain SGD: weights then differ exactly as much as the gradients do (Adam would
        # magnify rounding noise in near-zero gradients).
        "optim": "sgd",
        "learning_rate": 0.5,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "seed": 0,
        **overrides,
    }
    return TrainingArguments(**values)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


def train_with_trainer(tmp_path: Path, loss: SegLMLoss | None) -> dict[str, torch.Tensor]:
    model = tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0)
    rows = [{k: v for k, v in row.items() if k != "answer_mask"} for row in token_rows()]
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=rows,
        data_collator=default_data_collator,
        compute_loss_func=loss,
    )
    trainer.train()
    return weights(model)


def test_compute_loss_func_with_ce_trains_exactly_like_the_models_own_loss(
    tmp_path: Path,
) -> None:
    # Gradient accumulation over micro-batches with different label counts: only a loss that
    # follows the num_items_in_batch contract reproduces the model's own token mean.
    own = train_with_trainer(tmp_path, None)
    ours = train_with_trainer(tmp_path, SegLMLoss("ce"))
    focal = train_with_trainer(tmp_path, SegLMLoss("focal"))
    assert max_difference(own, ours) < 1e-6
    assert max_difference(own, focal) > 1e-4


def sft_run(tmp_path: Path, loss: SegLMLoss | None) -> dict[str, torch.Tensor]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = char_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    rows = [
        {"prompt": f"Question: {a}+{b}=?\nAnswer: ", "completion": str(a + b)}
        for a in range(4)
        for b in range(3)
    ]
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, seed=0)
    args = SFTConfig(
        **arguments(tmp_path, per_device_train_batch_size=4).to_dict() | {"bf16": False}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL plans to drop compute_loss_func in 2.0
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            compute_loss_func=loss,
        )
    trainer.train()
    return weights(model)


def test_compute_loss_func_in_sft_trainer_on_prompt_completion_data(tmp_path: Path) -> None:
    # TRL masks the prompt (completion-only loss): with labels alone the answer is every
    # supervised label, so "ce" must match TRL's own completion loss.
    own = sft_run(tmp_path, None)
    ce = sft_run(tmp_path, SegLMLoss("ce"))
    mixed_loss = SegLMLoss("ce=0.6,lovasz=0.4")
    mixed = sft_run(tmp_path, mixed_loss)
    assert max_difference(own, ce) < 1e-6
    assert max_difference(own, mixed) > 1e-4
    assert set(mixed_loss.last_components) == {"ce", "lovasz"}
    assert all(torch.isfinite(v) for v in mixed_loss.last_components.values())


def test_seglm_trainer_logs_each_component_and_uses_the_answer_mask(tmp_path: Path) -> None:
    def run(spec: str, rows: list[dict[str, torch.Tensor]]) -> tuple[Any, dict]:
        model = tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0)
        trainer = SegLMTrainer(
            model=model,
            args=arguments(tmp_path, remove_unused_columns=False),
            train_dataset=rows,
            data_collator=default_data_collator,
            objective=spec,
        )
        trainer.train()
        return trainer, weights(model)

    trainer, with_mask = run("ce=0.6,focal=0.4", token_rows())
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == STEPS
    assert all({"loss_ce", "loss_focal"} <= set(entry) for entry in logged)
    # Focal over the answer mask (the last two answer tokens) differs from focal over every label.
    without_mask = [{k: v for k, v in r.items() if k != "answer_mask"} for r in token_rows()]
    _, all_labels = run("ce=0.6,focal=0.4", without_mask)
    assert max_difference(with_mask, all_labels) > 1e-5


def test_seglm_loss_needs_labels() -> None:
    with pytest.raises(ValueError, match="needs labels"):
        SegLMLoss("ce")({"logits": torch.zeros(1, 2, 3)}, None)


def test_seglm_trainer_evaluation_with_the_fused_head(tmp_path: Path) -> None:
    rows = token_rows()

    def evaluate(fused_loss: bool, loss_only: bool) -> Any:
        trainer = SegLMTrainer(
            model=tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0),
            args=arguments(tmp_path, remove_unused_columns=False, prediction_loss_only=loss_only),
            data_collator=default_data_collator,
            objective="ce=0.6,lovasz=0.4",
            fused_loss=fused_loss,
        )
        assert (trainer.fused_head is not None) == fused_loss
        return trainer.predict(rows)

    expected = evaluate(fused_loss=False, loss_only=False)
    # The loss alone comes from the fused head; a caller that wants logits gets them materialised.
    loss_only = evaluate(fused_loss=True, loss_only=True)
    with_logits = evaluate(fused_loss=True, loss_only=False)
    assert loss_only.predictions is None
    assert loss_only.metrics["test_loss"] == pytest.approx(expected.metrics["test_loss"], rel=1e-5)
    assert with_logits.predictions.shape == (len(rows), 12, VOCAB)
    torch.testing.assert_close(
        torch.as_tensor(with_logits.predictions), torch.as_tensor(expected.predictions)
    )
