"""Drop-in use: ``SegLMLoss`` as a ``compute_loss_func`` in transformers' Trainer and TRL's
SFTTrainer, and ``SegLMTrainer`` with an answer mask, each for a few steps of a tiny model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from train._helpers import char_tokenizer
from transformers import Trainer, TrainingArguments, default_data_collator

from seglm.integrations import SegLMLoss, SegLMTrainer
from seglm.models import tiny_llama

VOCAB = 64
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


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
    # Over two micro-batches per step only a batch-grouped set loss is allowed (see below).
    mixed_loss = SegLMLoss("ce=0.6,lovasz=0.4", group="batch")
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


# -- gradient accumulation: batch 2 x GA 1 must train exactly like batch 1 x GA 2 ----------------

GA_SPECS = ["ce", "ce=0.6,focal=0.4", "ce=0.6,lovasz=0.4", "ce=0.6,gdice=0.4"]
SEQUENCE_SET_SPECS = GA_SPECS[2:]


def sft_rows() -> list[dict[str, str]]:
    # Completions of different lengths: micro-batches hold different numbers of answer tokens.
    return [
        {"prompt": f"Question: {a}*{b}=?\nAnswer: ", "completion": f"{a}*{b}={a * b}" + "!" * a}
        for a in range(1, 5)
        for b in range(2)
    ]


def split_runs(run: Any, **options: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The weights after 2 SGD steps at batch 2 x GA 1 and at batch 1 x GA 2 (the same
    examples in each step: the sampler's order does not depend on the batch size)."""
    whole = run(per_device_train_batch_size=2, gradient_accumulation_steps=1, **options)
    split = run(per_device_train_batch_size=1, gradient_accumulation_steps=2, **options)
    return whole, split


def run_trainer(
    tmp_path: Path, spec: str, loss: bool = False, fused_loss: bool | None = None, **overrides: Any
) -> dict[str, torch.Tensor]:
    """SegLMTrainer with an answer mask, or (``loss``) the plain Trainer with SegLMLoss."""
    model = tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0)
    rows = token_rows()
    common = {
        "model": model,
        "train_dataset": rows
        if not loss
        else [{k: v for k, v in r.items() if k != "answer_mask"} for r in rows],
        "data_collator": default_data_collator,
    }
    args = arguments(tmp_path, max_steps=2, remove_unused_columns=False, **overrides)
    if loss:
        trainer: Any = Trainer(args=args, compute_loss_func=SegLMLoss(spec), **common)
    else:
        trainer = SegLMTrainer(args=args, objective=spec, fused_loss=fused_loss, **common)
    trainer.train()
    return weights(model)


def run_sft(
    tmp_path: Path,
    spec: str | None,
    loss: bool = False,
    fused_loss: bool | None = None,
    **overrides: Any,
) -> dict[str, torch.Tensor]:
    """SegLMSFTTrainer, or (``loss``) TRL's SFTTrainer with SegLMLoss, or (``spec`` None) TRL's
    own loss, on prompt/completion data."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from seglm.integrations import SegLMSFTTrainer

    tokenizer = char_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, seed=0)
    settings = arguments(tmp_path, **{"max_steps": 2, **overrides}).to_dict() | {"bf16": False}
    common = {
        "model": model,
        "args": SFTConfig(**settings),
        "train_dataset": Dataset.from_list(sft_rows()),
        "processing_class": tokenizer,
    }
    if spec is None:
        trainer: Any = SFTTrainer(**common)
    elif loss:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            trainer = SFTTrainer(compute_loss_func=SegLMLoss(spec), **common)
    else:
        trainer = SegLMSFTTrainer(objective=spec, fused_loss=fused_loss, **common)
    trainer.train()
    return weights(model)


@pytest.mark.parametrize("fused_loss", [False, True])
@pytest.mark.parametrize("spec", GA_SPECS)
def test_seglm_trainer_does_not_depend_on_the_micro_batch_size(
    tmp_path: Path, spec: str, fused_loss: bool
) -> None:
    whole, split = split_runs(lambda **o: run_trainer(tmp_path, spec, fused_loss=fused_loss, **o))
    assert max_difference(whole, split) < 1e-6


@pytest.mark.parametrize("fused_loss", [False, True])
@pytest.mark.parametrize("spec", GA_SPECS)
def test_sft_trainer_subclass_does_not_depend_on_the_micro_batch_size(
    tmp_path: Path, spec: str, fused_loss: bool
) -> None:
    whole, split = split_runs(lambda **o: run_sft(tmp_path, spec, fused_loss=fused_loss, **o))
    assert max_difference(whole, split) < 1e-6


def test_sft_trainer_subclass_with_ce_trains_like_trls_own_loss(tmp_path: Path) -> None:
    own = run_sft(tmp_path, None, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    ours = run_sft(tmp_path, "ce", gradient_accumulation_steps=2, per_device_train_batch_size=2)
    mixed = run_sft(
        tmp_path, "ce=0.6,lovasz=0.4", gradient_accumulation_steps=2, per_device_train_batch_size=2
    )
    assert max_difference(own, ours) < 1e-6
    assert max_difference(own, mixed) > 1e-4


@pytest.mark.parametrize("spec", GA_SPECS[:2])
def test_seglm_loss_token_means_do_not_depend_on_the_micro_batch_size(
    tmp_path: Path, spec: str
) -> None:
    whole, split = split_runs(lambda **o: run_trainer(tmp_path, spec, loss=True, **o))
    assert max_difference(whole, split) < 1e-6
    whole, split = split_runs(lambda **o: run_sft(tmp_path, spec, loss=True, **o))
    assert max_difference(whole, split) < 1e-6


@pytest.mark.parametrize("spec", SEQUENCE_SET_SPECS)
def test_seglm_loss_refuses_a_sequence_mean_it_cannot_weight(tmp_path: Path, spec: str) -> None:
    # Told only the window's label count, the drop-in cannot weight a mean over the window's
    # examples: it refuses rather than train 2-3% off.
    options = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 2}
    with pytest.raises(ValueError, match=r"group='sequence'.*SegLMSFTTrainer"):
        run_trainer(tmp_path, spec, loss=True, **options)
    with pytest.raises(ValueError, match=r"group='sequence'.*SegLMSFTTrainer"):
        run_sft(tmp_path, spec, loss=True, **options)
    # One micro-batch per step is exact, and a batch-grouped loss is what it is.
    run_trainer(tmp_path, spec, loss=True, gradient_accumulation_steps=1)
    SegLMLoss(spec, group="batch")(
        {"logits": torch.zeros(1, 3, 5)}, torch.tensor([[1, 2, 3]]), torch.tensor(7)
    )


def test_logged_components_are_the_windows_exact_means(tmp_path: Path) -> None:
    # Two examples with 2 and 6 supervised labels, batch 1 x GA 2: the window's CE is the mean
    # over its 8 labels (the mean of the two micro-batch means differs).
    rows = [token_rows()[0], token_rows()[4]]
    assert [int((row["labels"] != -100).sum()) for row in rows] == [2, 6]
    with torch.no_grad():
        double = tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0).double()
        total = count = 0.0
        for row in rows:
            logits = double(input_ids=row["input_ids"][None]).logits[0, :-1]
            targets = row["labels"][1:]
            keep = targets != -100
            total += torch.nn.functional.cross_entropy(
                logits[keep], targets[keep], reduction="sum"
            ).item()
            count += int(keep.sum())
    expected = total / count
    for fused_loss in (False, True):
        trainer = SegLMTrainer(
            model=tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0),
            args=arguments(
                tmp_path,
                max_steps=1,
                per_device_train_batch_size=1,
                gradient_accumulation_steps=2,
                remove_unused_columns=False,
            ),
            train_dataset=rows,
            data_collator=default_data_collator,
            objective="ce",
            fused_loss=fused_loss,
        )
        trainer.train()
        (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
        assert logged["loss"] == pytest.approx(expected, rel=1e-6)
        assert logged["loss_ce"] == pytest.approx(expected, rel=1e-6)


def test_gradient_accumulation_without_loss_is_scaled_for_ga(tmp_path: Path) -> None:
    # transformers before 5.19 never reads loss_is_scaled_for_ga: it divides the loss by the
    # accumulation steps unless the model "accepts loss kwargs", which some architectures
    # (Gemma 3, Qwen-VL) say they do not. Such a Trainer must still not divide our loss.
    def run(**options: Any) -> dict[str, torch.Tensor]:
        model = tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0)
        model.accepts_loss_kwargs = False
        trainer = SegLMTrainer(
            model=model,
            args=arguments(tmp_path, max_steps=2, remove_unused_columns=False, **options),
            train_dataset=token_rows(),
            data_collator=default_data_collator,
            objective="ce=0.6,lovasz=0.4",
        )
        trainer.loss_is_scaled_for_ga = None  # what a transformers < 5.19 Trainer amounts to
        trainer.train()
        return weights(model)

    whole, split = split_runs(run)
    assert max_difference(whole, split) < 1e-6


def test_sft_trainer_subclass_with_a_peft_config_installs_the_fused_head_after_wrapping(
    tmp_path: Path,
) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig

    from seglm.integrations import SegLMSFTTrainer

    def run(fused_loss: bool | None) -> tuple[Any, dict[str, torch.Tensor]]:
        tokenizer = char_tokenizer()
        tokenizer.pad_token = tokenizer.eos_token
        settings = arguments(tmp_path, max_steps=2).to_dict() | {"bf16": False}
        trainer = SegLMSFTTrainer(
            model=tiny_llama(vocab_size=len(tokenizer), hidden_size=32, seed=0),
            args=SFTConfig(**settings),
            train_dataset=Dataset.from_list(sft_rows()),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
            objective="ce=0.6,lovasz=0.4",
            fused_loss=fused_loss,
        )
        trainer.train()
        adapter = {k: v for k, v in weights(trainer.model).items() if "lora_" in k}
        return trainer, adapter

    fused, fused_adapter = run(None)
    plain, plain_adapter = run(False)
    assert fused.fused_head is not None and plain.fused_head is None
    assert fused_adapter and any(
        v.abs().sum() > 0 for k, v in fused_adapter.items() if "lora_B" in k
    )
    assert max_difference(fused_adapter, plain_adapter) < 1e-6


def test_sft_trainer_subclass_refuses_packed_rows_for_a_sequence_mean(tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import SFTConfig

    from seglm.integrations import SegLMSFTTrainer

    tokenizer = char_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    settings = arguments(tmp_path).to_dict() | {"bf16": False, "packing": True}
    with pytest.raises(ValueError, match="packing / padding_free put several examples in one row"):
        SegLMSFTTrainer(
            model=tiny_llama(vocab_size=len(tokenizer), hidden_size=32, seed=0),
            args=SFTConfig(**settings),
            train_dataset=Dataset.from_list(sft_rows()),
            processing_class=tokenizer,
            objective="ce=0.6,lovasz=0.4",
        )
