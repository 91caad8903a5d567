"""HellaSwag (Zellers et al. 2019): pick the most plausible continuation of a context.

Prompt (the paper's): ``Question: {ctx}\\nA. {ending0}\\nB. ...\\nD. {ending3}\\nAnswer: ``;
target and reference: the gold letter.

Splits: ``test`` is the official validation set (10042), as the paper reported it, because the
official test set has no labels. The paper also selected checkpoints on that set
(docs/method.md, "Known defects", item 7);
here ``validation`` is instead a held-out 2.5% of the official train set (``datasets``
``train_test_split(test_size=0.025, seed=42)``: 998 examples) and ``train`` the rest (38907), so
checkpoint selection never sees the test data. ``official_train`` is the whole train set (39905,
the paper's training data; it contains ``validation``).

Files in a data dir: ``hellaswag/hellaswag_train.jsonl`` and ``hellaswag/hellaswag_val.jsonl``
(the original names), or for validation the stand-in ``hellaswag/validation.jsonl``, whose
``ctx`` has the WikiHow ``[header]``/``[title]`` markup already removed (the hub's has it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from .base import (
    ChoiceTask,
    DataDir,
    Example,
    LoadReport,
    Record,
    label_index,
    require,
    require_strings,
)
from .sources import DatasetSource, SplitSource, holdout_split, read_split

HOLDOUT_FRACTION = 0.025
HOLDOUT_SEED = 42

SOURCE = DatasetSource(
    hub_id="Rowan/hellaswag",
    hub_config=None,
    splits={
        "train": SplitSource(("hellaswag/hellaswag_train.jsonl",), "train"),
        "validation": SplitSource(
            ("hellaswag/hellaswag_val.jsonl", "hellaswag/validation.jsonl"), "validation"
        ),
    },
)


@dataclass
class HellaSwag(ChoiceTask):
    """HellaSwag with the paper's prompt; option ``target`` (:class:`ChoiceTask`)."""

    name: ClassVar[str] = "hellaswag"
    answer_format: ClassVar[str] = "choice"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test", "official_train")
    split_notes: ClassVar[dict[str, str]] = {
        "train": "the official train set without the held-out 2.5% (seed 42)",
        "validation": "2.5% of the official train set held out (seed 42); not the test data",
        "test": "the official validation set (the official test set is unlabelled)",
        "official_train": "the whole official train set (it contains 'validation')",
    }
    plain_max_length: ClassVar[int] = 256
    max_new_tokens: ClassVar[int] = 4
    stop_strings: ClassVar[tuple[str, ...]] = ("\n",)

    def loglik_query(self, example: Example) -> tuple[str, list[str]]:
        """lm-evaluation-harness's HellaSwag query: ``activity_label: ctx``, context and endings
        cleaned as its preprocessing does."""
        context, choices = super().loglik_query(example)
        label = example.metadata.get("activity_label") or ""
        context = f"{label}: {context}" if label else context
        return _clean(context), [_clean(choice) for choice in choices]

    def records(self, split: str, data_dir: DataDir, report: LoadReport) -> Iterator[Record]:
        if split == "test":
            return read_split(SOURCE, "validation", data_dir, report)
        if split == "official_train":
            return read_split(SOURCE, "train", data_dir, report)
        rows = list(read_split(SOURCE, "train", data_dir, report, held_out=HOLDOUT_FRACTION))
        kept, held_out = holdout_split(len(rows), HOLDOUT_FRACTION, HOLDOUT_SEED)
        return (rows[i] for i in (kept if split == "train" else held_out))

    def to_example(self, record: Record) -> Example:
        fields = record.fields()
        where = record.where
        context = require(fields, "ctx", str, where)
        endings = require_strings(fields, "endings", where)
        gold = label_index(fields.get("label"), len(endings), where, "label")
        return self.choice_example(
            f"{self.name}/{record.split}/{record.index}",
            context,
            endings,
            gold,
            metadata={"activity_label": fields.get("activity_label"), "ind": fields.get("ind")},
        )


def _clean(text: str) -> str:
    """lm-evaluation-harness's HellaSwag text cleaning: ``[title]`` to a full stop, other
    bracketed tags dropped, double spaces closed."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")
