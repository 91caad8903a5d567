"""One SegLMTrainer step of a tiny model, recording the gradient; run alone or under torchrun.

Under ``torchrun --nproc_per_node 2`` (gloo on CPU) each scenario runs on 2 processes and rank 0
saves the synchronised gradients to the file named by the first argument; the test compares them
with :func:`gradients` run in a single process on the same global batch.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments

from seglm.data import DataCollator
from seglm.losses import Objective
from seglm.models import tiny_llama
from seglm.trainer import SegLMTrainer

VOCAB = 48


@dataclass(frozen=True)
class Scenario:
    spec: str
    rows: tuple[tuple[int, int], ...]  # (prompt length, answer length); 0 answer: nothing to learn
    ce_scope: str = "all"
    group: str = "sequence"


SCENARIOS: dict[str, Scenario] = {
    # Token-mean terms over 4 examples with different prompt and answer lengths.
    "token_mean": Scenario("ce=0.5,focal=0.3,sadl=0.2", ((3, 2), (6, 5), (2, 7), (5, 1))),
    # A set loss, one group per sequence, one sequence per micro-batch.
    "set_sequence": Scenario("ce=0.5,lovasz=0.3,gdice=0.2", ((3, 2), (6, 5), (2, 7), (5, 1))),
    # One example has no supervised token at all: its rank has nothing to learn from.
    "empty_rank": Scenario("ce=0.6,lovasz=0.4", ((4, 3), (5, 0)), ce_scope="answer"),
}


def features(scenario: Scenario) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for prompt, answer in scenario.rows:
        ids = torch.randint(1, VOCAB, (prompt + answer,), generator=generator).tolist()
        labels = ids if answer else [-100] * len(ids)
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": labels,
                "answer_mask": [0] * prompt + [1] * answer,
            }
        )
    return rows


class GradientRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.gradients: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.gradients = {
            name: parameter.grad.detach().clone()
            for name, parameter in model.named_parameters()
            if parameter.grad is not None
        }


def gradients(
    name: str, batch_size: int, grad_accum: int, fused_loss: bool = True
) -> dict[str, torch.Tensor]:
    """The gradient of the first optimiser step of ``name`` over all of its examples (the loss
    from the fused head inside the model's forward, or from materialised logits)."""
    scenario = SCENARIOS[name]
    recorder = GradientRecorder()
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=grad_accum,
            max_grad_norm=0.0,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            average_tokens_across_devices=True,
            dataloader_pin_memory=False,
            use_cpu=True,  # gloo process group on CPU
        )
        trainer = SegLMTrainer(
            model=tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0),
            args=args,
            train_dataset=features(scenario),
            data_collator=DataCollator(pad_token_id=0),
            objective=Objective.from_spec(
                scenario.spec, ce_scope=scenario.ce_scope, group=scenario.group
            ),
            fused_loss=fused_loss,
            callbacks=[recorder],
        )
        trainer.train()
    return recorder.gradients


def main(output: str) -> None:
    torch.set_num_threads(1)
    results = {
        "token_mean": gradients("token_mean", batch_size=1, grad_accum=2),
        "set_sequence": gradients("set_sequence", batch_size=1, grad_accum=2),
        "empty_rank": gradients("empty_rank", batch_size=1, grad_accum=1),
    }
    if torch.distributed.get_rank() == 0:
        torch.save(results, output)


if __name__ == "__main__":
    main(sys.argv[1])
