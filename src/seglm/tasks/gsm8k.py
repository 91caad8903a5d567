"""GSM8K (Cobbe et al. 2021): grade-school maths word problems with worked solutions.

Prompt: ``Question: {question}\\nAnswer: ``. Targets (option ``target``):
- ``paper`` (default): the calculator annotations and the final line, space-joined, as the paper
  trained: ``<<48/2=24>> <<48+24=72>> #### 72``;
- ``full``: the whole published solution (text, annotations, ``#### 72``), as lm-eval uses.
The reference is always the full published solution.

Splits: ``train`` and ``validation`` are the paper's 90% / 10% split of the official train set
(``datasets`` ``train_test_split(test_size=0.1, seed=42)``, 6725 / 748, in that split's order);
``test`` is the official test set (1319); ``official_train`` is the whole train set (7473).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from seglm.choices import check_choice
from seglm.metrics.steps import FORMULA

from .base import (
    DataDir,
    DataError,
    Example,
    LoadReport,
    Record,
    Task,
    question_prompt,
    require,
)
from .sources import DatasetSource, SplitSource, holdout_split, read_split

FINAL_LINE = re.compile(r"####[ \t]*(\S[^\n]*?)[ \t]*$", re.MULTILINE)
TARGET_STYLES = ("paper", "full")
PAPER_HOLDOUT_FRACTION = 0.1
PAPER_SEED = 42

SOURCE = DatasetSource(
    hub_id="openai/gsm8k",
    hub_config="main",
    splits={
        "train": SplitSource(("gsm8k/train.jsonl",), "train"),
        "test": SplitSource(("gsm8k/test.jsonl",), "test"),
    },
)


def final_answer(solution: str, where: str, field_name: str = "answer") -> str:
    """The text after the last ``#### `` line of a solution."""
    answers = FINAL_LINE.findall(solution)
    if not answers:
        raise DataError(
            where, field_name, "no final line '#### <answer>' in the solution", "no final answer"
        )
    return answers[-1]


def paper_target(solution: str, answer: str) -> str:
    """The paper's target: every ``<<...>>`` annotation, then ``#### answer``, space-joined."""
    annotations = [match.group(0) for match in FORMULA.finditer(solution)]
    return " ".join([*annotations, f"#### {answer}"])


@dataclass
class GSM8K(Task):
    """GSM8K; option ``target``: ``paper`` (annotations + answer) or ``full`` (whole solution)."""

    name: ClassVar[str] = "gsm8k"
    answer_format: ClassVar[str] = "gsm8k"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test", "official_train")
    split_notes: ClassVar[dict[str, str]] = {
        "train": "90% of the official train set (the paper's split, seed 42)",
        "validation": "10% of the official train set held out (the paper's split, seed 42)",
        "test": "the official test set",
        "official_train": "the whole official train set (it contains 'validation')",
    }

    target: str = "paper"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("target", self.target, TARGET_STYLES)

    # The paper's 128 tokens cut the start of a fifth of the questions (docs/method.md,
    # "Known defects", item 5); these limits hold every GSM8K example whole with the SmolLM2
    # tokenizer (longest: 311 / 544 tokens).
    @property
    def plain_max_length(self) -> int:  # type: ignore[override]
        return 384 if self.target == "paper" else 640

    @property
    def max_new_tokens(self) -> int:  # type: ignore[override]
        return 192 if self.target == "paper" else 512

    def records(self, split: str, data_dir: DataDir, report: LoadReport) -> Iterator[Record]:
        if split == "test":
            return read_split(SOURCE, "test", data_dir, report)
        if split == "official_train":
            return read_split(SOURCE, "train", data_dir, report)
        rows = list(read_split(SOURCE, "train", data_dir, report, held_out=PAPER_HOLDOUT_FRACTION))
        kept, held_out = holdout_split(len(rows), PAPER_HOLDOUT_FRACTION, PAPER_SEED)
        return (rows[i] for i in (kept if split == "train" else held_out))

    def to_example(self, record: Record) -> Example:
        fields = record.fields()
        question = require(fields, "question", str, record.where)
        solution = require(fields, "answer", str, record.where, "the solution ending in '#### N'")
        answer = final_answer(solution, record.where)
        return Example(
            id=f"{self.name}/{record.split}/{record.index}",
            prompt=self.render_prompt(question_prompt(question)),
            target=solution if self.target == "full" else paper_target(solution, answer),
            reference=solution,
            source=question,
            metadata={"answer": answer},
        )
