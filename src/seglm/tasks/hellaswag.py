"""HellaSwag (Zellers et al. 2019): pick the most plausible continuation of a context.

Prompt (the paper's): ``Question: {ctx}\\nA. {ending0}\\nB. ...\\nD. {ending3}\\nAnswer: ``;
target and reference: the gold letter.

Splits, as the paper used them: ``train`` is the official train set (39905); ``test`` is the
official validation set (10042), because the official test set has no labels. ``validation`` is
that same validation set: the paper selected checkpoints on the data it reported (SPEC 7.7), and
a warning says so whenever it is loaded.

Files in a data dir: ``hellaswag/hellaswag_train.jsonl`` and ``hellaswag/hellaswag_val.jsonl``
(the original names), or for validation the stand-in ``hellaswag/validation.jsonl``, whose
``ctx`` has the WikiHow ``[header]``/``[title]`` markup already removed (the hub's has it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from .base import (
    DataDir,
    Example,
    LoadReport,
    Record,
    Task,
    label_index,
    require,
    require_strings,
)
from .sources import DatasetSource, SplitSource, read_split

logger = logging.getLogger(__name__)

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
class HellaSwag(Task):
    """HellaSwag with the paper's prompt."""

    name: ClassVar[str] = "hellaswag"
    answer_format: ClassVar[str] = "choice"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    plain_max_length: ClassVar[int] = 256
    max_new_tokens: ClassVar[int] = 4
    stop_strings: ClassVar[tuple[str, ...]] = ("\n",)

    def records(self, split: str, data_dir: DataDir, report: LoadReport) -> Iterator[Record]:
        if split == "validation":
            logger.warning(
                "hellaswag: 'validation' is the same data as 'test' (the paper's test := "
                "validation); choosing checkpoints on it tunes on the test set"
            )
        source_split = "train" if split == "train" else "validation"
        return read_split(SOURCE, source_split, data_dir, report)

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
