"""OpenBookQA (Mihaylov et al. 2018): elementary science questions with four choices.

Prompt (the paper's, from the ``additional`` config): ::

    Question: {stem}
    A. {choice}
    B. {choice}
    C. {choice}
    D. {choice}
    Context: {fact1}
    Answer:

(with a trailing space); target and reference: the gold letter. With ``context=False`` the
``main`` config is read and the ``Context:`` line is left out.
Splits: ``train`` 4957 / ``validation`` (the published ``dev``) 500 / ``test`` 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, ClassVar

from .base import (
    LETTERS,
    ChoiceTask,
    DataDir,
    DataError,
    Example,
    LoadReport,
    Record,
    require,
)
from .sources import DatasetSource, SplitSource, read_split

HUB_ID = "allenai/openbookqa"

ADDITIONAL = DatasetSource(
    hub_id=HUB_ID,
    hub_config="additional",
    splits={
        "train": SplitSource(("openbookqa/Additional/train_complete.jsonl",), "train"),
        "validation": SplitSource(("openbookqa/Additional/dev_complete.jsonl",), "validation"),
        "test": SplitSource(("openbookqa/Additional/test_complete.jsonl",), "test"),
    },
)
MAIN = DatasetSource(
    hub_id=HUB_ID,
    hub_config="main",
    splits={
        "train": SplitSource(("openbookqa/Main/train.jsonl",), "train"),
        "validation": SplitSource(("openbookqa/Main/dev.jsonl",), "validation"),
        "test": SplitSource(("openbookqa/Main/test.jsonl",), "test"),
    },
)


def from_hub(row: dict[str, Any]) -> dict[str, Any]:
    """A hub row (``question_stem``, ``choices: {text: [...], label: [...]}``) in the published
    file layout (``question: {stem, choices: [{text, label}]}``)."""
    choices = row.get("choices") or {}
    texts, labels = choices.get("text") or [], choices.get("label") or []
    record = {key: value for key, value in row.items() if key not in ("question_stem", "choices")}
    record["question"] = {
        "stem": row.get("question_stem"),
        # zip_longest: a length mismatch shows up as a missing text or label, with its location.
        "choices": [{"text": t, "label": label} for t, label in zip_longest(texts, labels)],
    }
    return record


def read_choices(question: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """The choice texts and their labels, in the published order."""
    choices = require(question, "choices", list, where, "of {text, label} objects", "question")
    texts, labels = [], []
    for position, choice in enumerate(choices):
        parent = f"question.choices[{position}]"
        if not isinstance(choice, dict):
            raise DataError(where, parent, "expected a {text, label} object", "bad choices")
        texts.append(require(choice, "text", str, where, parent=parent))
        labels.append(require(choice, "label", str, where, parent=parent).strip())
    if not 2 <= len(texts) <= len(LETTERS):
        raise DataError(where, "question.choices", f"{len(texts)} choices", "bad choices")
    return texts, labels


@dataclass
class OpenBookQA(ChoiceTask):
    """OpenBookQA; options ``context``: show the question's core fact (``fact1``), as the paper,
    and ``target`` (:class:`ChoiceTask`)."""

    name: ClassVar[str] = "openbookqa"
    answer_format: ClassVar[str] = "choice"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    split_aliases: ClassVar[dict[str, str]] = {"dev": "validation"}
    plain_max_length: ClassVar[int] = 128
    max_new_tokens: ClassVar[int] = 4
    stop_strings: ClassVar[tuple[str, ...]] = ("\n",)

    context: bool = True

    def records(self, split: str, data_dir: DataDir, report: LoadReport) -> Iterator[Record]:
        source = ADDITIONAL if self.context else MAIN
        return read_split(source, split, data_dir, report, from_hub)

    def to_example(self, record: Record) -> Example:
        fields = record.fields()
        where = record.where
        question = require(fields, "question", dict, where, "{stem, choices}")
        stem = require(question, "stem", str, where, parent="question")
        texts, labels = read_choices(question, where)
        answer_key = require(fields, "answerKey", str, where, "a choice label").strip()
        if answer_key not in labels:
            raise DataError(
                where,
                "answerKey",
                f"unknown answer letter {answer_key!r}; expected one of {', '.join(labels)}",
                "unknown answer letter",
            )
        gold = labels.index(answer_key)
        fact = require(fields, "fact1", str, where, "the core fact") if self.context else None
        record_id = fields.get("id") or record.index
        return self.choice_example(
            f"{self.name}/{record.split}/{record_id}",
            stem,
            texts,
            gold,
            context=fact,
            metadata={"fact1": fact} if fact is not None else {},
        )
