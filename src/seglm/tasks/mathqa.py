"""MathQA (Amini et al. 2019): GRE/GMAT word problems with operation programs.

Prompt: ``Question: {Problem}\\nAnswer: ``. Targets (option ``target``):
- ``paper`` (default): each step of ``linear_formula`` as an annotation, then the correct
  option's value as a float, space-joined: ``divide(n0,n1)|multiply(#0,const_100)|`` becomes
  ``<<divide(n0,n1)>> <<multiply(#0,const_100)>> #### 25.0``.
  Steps keep the dataset's own names (``n0`` = first number in the problem, ``#0`` = result of
  step 0, ``const_100``), as the paper did. Unlike the research code, the last step is kept
  when the formula has no trailing ``|`` (a quarter of the records).
- ``full``: the published rationale (outer quotes removed), a line of the same annotations,
  and ``#### {answer}``. The reference is always this full form.

The answer is the value of the correct option; records whose correct option is not a single
plain number (fractions, ratios, ``4 π``, ``none``) are skipped and counted, as the paper dropped
them. See :func:`option_number` for the exact rule.

Splits: ``train`` / ``validation`` (the published ``dev``) / ``test`` / ``challenge_test``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from seglm.choices import check_choice

from .base import (
    DataDir,
    DataError,
    Example,
    LoadReport,
    Record,
    SkippedRecord,
    Task,
    question_prompt,
    require,
)
from .gsm8k import TARGET_STYLES
from .sources import DatasetSource, SplitSource, read_split

OPTION_LETTERS = "abcde"
# "a ) 24 , b ) 120 , ..." : a letter and ")" at the start or right after a comma.
OPTION_MARK = re.compile(r"(?:^|,)\s*([a-e])\s*\)\s*")
LIST_ITEM = re.compile(r"\s*([a-e])\s*\)\s*(.*?)\s*$", re.DOTALL)
THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
NUMBER = re.compile(r"(?<![\w.])([-−–]\s?)?(\d+(?:\.\d+)?|\.\d+)")
# With a single number, these mean the value is not that number (4 π, √ 3, 2 ^ x).
SYMBOLIC = re.compile(r"[π√∛^]|\bpi\b|\broot\b|\bsqrt\b", re.IGNORECASE)

SOURCE = DatasetSource(
    hub_id="regisss/math_qa",  # the script-free mirror of allenai/math_qa
    hub_config=None,
    splits={
        "train": SplitSource(("mathqa/train.json",), "train"),
        "validation": SplitSource(("mathqa/dev.json",), "validation"),
        "test": SplitSource(("mathqa/test.json",), "test"),
        "challenge_test": SplitSource(("mathqa/challenge_test.json",), None),
    },
)


def parse_options(text: str, where: str) -> dict[str, str]:
    """Option letter -> option text, from either published form: ``"a ) 24 , b ) 120 , ..."``
    or the list-like ``"['a ) 4', 'b ) 4 π', ...]"``."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            items = None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise DataError(
                where,
                "options",
                "a '[...]' options string that is not a list of strings",
                "bad options",
            )
        matches = [LIST_ITEM.match(item) for item in items]
        if not all(matches):
            raise DataError(
                where, "options", "a list item does not start with 'x )'", "bad options"
            )
        pairs = [(m.group(1), m.group(2)) for m in matches if m]
    else:
        marks = list(OPTION_MARK.finditer(stripped))
        ends = [mark.start() for mark in marks[1:]] + [len(stripped)] if marks else []
        pairs = [
            (mark.group(1), stripped[mark.end() : end].strip())
            for mark, end in zip(marks, ends, strict=True)
        ]
    options = dict(pairs)
    if len(pairs) < 2 or len(options) != len(pairs):
        raise DataError(
            where,
            "options",
            f"expected options 'a ) ... , b ) ...', got {text[:60]!r}",
            "bad options",
        )
    return options


def option_number(text: str) -> float | None:
    """The option's value when it is one plain number, else None.

    Thousands commas are removed and a leading minus (``-``, ``−``, ``–``, spaced or not) is
    kept. Words and unit marks around the number are allowed (``rs . 8000``, ``15 %``,
    ``12 km / hr``); two numbers (``1 / 3``, ``3 : 4``, ``12 cm 2``) or a symbolic mark
    (``4 π``, ``√ 3``) make it not a number. The research code instead stripped non-digits at
    both ends, which read ``4 π`` as 4.
    """
    cleaned = THOUSANDS_COMMA.sub("", text)
    numbers = list(NUMBER.finditer(cleaned))
    if len(numbers) != 1:
        return None
    number = numbers[0]
    if SYMBOLIC.search(cleaned[: number.start()] + cleaned[number.end() :]):
        return None
    return float(("-" if number.group(1) else "") + number.group(2))


def formula_steps(linear_formula: str) -> list[str]:
    return [step.strip() for step in linear_formula.split("|") if step.strip()]


def clean_rationale(rationale: str) -> str:
    text = rationale.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


@dataclass
class MathQA(Task):
    """MathQA; option ``target``: ``paper`` (formula annotations + answer) or ``full``."""

    name: ClassVar[str] = "mathqa"
    answer_format: ClassVar[str] = "mathqa"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test", "challenge_test")
    split_aliases: ClassVar[dict[str, str]] = {"dev": "validation"}
    plain_max_length: ClassVar[int] = 1024

    target: str = "paper"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("target", self.target, TARGET_STYLES)

    @property
    def max_new_tokens(self) -> int:  # type: ignore[override]
        return 320 if self.target == "paper" else 800

    def records(self, split: str, data_dir: DataDir, report: LoadReport) -> Iterator[Record]:
        return read_split(SOURCE, split, data_dir, report)

    def to_example(self, record: Record) -> Example:
        fields = record.fields()
        where = record.where
        problem = require(fields, "Problem", str, where)
        options = parse_options(require(fields, "options", str, where), where)
        correct = require(fields, "correct", str, where, "an option letter a-e").strip().lower()
        if correct not in options:
            raise DataError(
                where,
                "correct",
                f"unknown answer letter {correct!r}; options are {', '.join(options)}",
                "unknown answer letter",
            )
        value = option_number(options[correct])
        if value is None:
            raise SkippedRecord(
                where,
                "options",
                f"correct option {correct} ) {options[correct]!r} is not a number",
                "answer not a number",
            )
        steps = formula_steps(require(fields, "linear_formula", str, where))
        annotations = " ".join(f"<<{step}>>" for step in steps)
        answer = str(value)
        paper = f"{annotations} #### {answer}".lstrip()
        rationale = clean_rationale(fields.get("Rationale") or "")
        full = "\n".join(part for part in (rationale, annotations, f"#### {answer}") if part)
        return Example(
            id=f"{self.name}/{record.split}/{record.index}",
            prompt=self.render_prompt(question_prompt(problem)),
            target=full if self.target == "full" else paper,
            reference=full,
            source=problem,
            metadata={
                "answer": answer,
                "correct": correct,
                "options": [options[letter] for letter in sorted(options)],
                "category": fields.get("category"),
            },
        )
