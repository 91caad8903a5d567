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
from typing import Any, ClassVar

from .base import (
    LETTERS,
    DataDir,
    DataError,
    Example,
    LoadReport,
    Record,
    Task,
    choice_prompt,
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


def gold_index(fields: dict[str, Any], count: int, where: str) -> int:
    """The label as an index: an int, or the hub's digit string."""
    label = fields.get("label")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int):
        raise DataError(
            where, "label", f"expected an index 0-{count - 1}, got {label!r}", "bad label"
        )
    if not 0 <= label < count:
        raise DataError(where, "label", f"index {label} outside 0-{count - 1}", "bad label")
    return label


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
        gold = gold_index(fields, len(endings), where)
        return Example(
            id=f"{self.name}/{record.split}/{record.index}",
            prompt=self.render_prompt(choice_prompt(context, endings)),
            target=LETTERS[gold],
            reference=LETTERS[gold],
            source=context,
            choices=tuple(endings),
            label=gold,
            metadata={"activity_label": fields.get("activity_label"), "ind": fields.get("ind")},
        )
