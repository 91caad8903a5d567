"""What every task shares: the example record, load errors and reports, and prompt rendering.

A task is a small dataclass: its fields are the user's options (target style, prompt style, error
policy, ...) and its class attributes describe the data (name, answer format, splits, lengths).
Loading reads records from a source (files, the hub, or a generator) and turns each into an
:class:`Example`; records that cannot be used are either an error naming file, line and field, or
(when the policy says so) skipped and counted in the :class:`LoadReport`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import typing
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import TypeAdapter

from seglm.choices import check_choice
from seglm.metrics.exact_match import CHOICE_LETTERS
from seglm.schema import schema_type, validate

logger = logging.getLogger(__name__)

DataDir = str | os.PathLike[str] | None
LETTERS = CHOICE_LETTERS  # at most len(LETTERS) choices: the letters exact match can read
PROMPT_STYLES = ("plain", "chat")
ERROR_POLICIES = ("raise", "skip")
CHOICE_TARGETS = ("letter", "text")
MAX_ERRORS_KEPT = 20
# SmolLM2's chat template with its default system prompt adds 29 tokens; this leaves room for it.
CHAT_TEMPLATE_MARGIN = 64


@dataclass(frozen=True)
class Example:
    """One prompt/target pair, ready to tokenise or to score.

    ``target`` is what the model must produce (without EOS); ``reference`` is the dataset's
    answer text used for scoring (GSM8K: the full solution ending in ``#### N``; choice tasks:
    the gold letter); ``source`` is the question text (ROSCOE's source).
    """

    id: str
    prompt: str
    target: str
    reference: str
    source: str
    choices: tuple[str, ...] | None = None
    label: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class DataError(ValueError):
    """A record that cannot be used: says where (file:line or hub row), which field, and why.

    ``reason`` is the short category the load report counts (e.g. ``missing field``).
    """

    def __init__(self, where: str, field_name: str | None, problem: str, reason: str) -> None:
        self.where = where
        self.field_name = field_name
        self.problem = problem
        self.reason = reason
        location = f"{where}: field {field_name!r}" if field_name else where
        super().__init__(f"{location}: {problem}")


class SkippedRecord(DataError):
    """A record the task's own policy drops (e.g. a MathQA answer that is not a number).

    Always skipped and counted, whatever ``on_error`` says, because the paper dropped them too.
    """


@dataclass
class LoadReport:
    """What a load read, kept and skipped (by reason), with the first messages for each skip."""

    task: str
    split: str
    source: str = ""
    records: int = 0
    examples: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def skip(self, error: DataError) -> None:
        self.skipped[error.reason] += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(str(error))

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "split": self.split,
            "source": self.source,
            "records": self.records,
            "examples": self.examples,
            "skipped": dict(self.skipped),
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class Loaded:
    examples: list[Example]
    report: LoadReport


@dataclass(frozen=True)
class Record:
    """One raw record: where it came from, its position in the source split, and its content
    (a JSON line not yet parsed, or an already parsed object)."""

    where: str
    split: str
    index: int
    raw: Any

    def fields(self) -> dict[str, Any]:
        value = self.raw
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                problem = f"malformed JSON ({error.msg} at column {error.colno})"
                raise DataError(self.where, None, problem, "malformed JSON") from None
        if not isinstance(value, dict):
            raise DataError(
                self.where,
                None,
                f"expected a JSON object, got {type(value).__name__}",
                "not an object",
            )
        if isinstance(self.raw, str) and "\\ud" in self.raw.lower():
            try:  # an escaped half of a UTF-16 pair (\ud800) decodes to text no tokenizer takes
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                problem = "holds a lone surrogate escape (such as \\ud800), which is not text"
                raise DataError(self.where, None, problem, "not text") from None
        return value


def require(
    fields: dict[str, Any], name: str, kind: type, where: str, what: str = "", parent: str = ""
) -> Any:
    """The value of a required field, checked for type (and non-emptiness for strings).

    ``parent`` names the enclosing field in messages (``question.stem``)."""
    label = f"{parent}.{name}" if parent else name
    expected = f"a {kind.__name__}" + (f" ({what})" if what else "")
    if name not in fields or fields[name] is None:
        raise DataError(where, label, f"missing; expected {expected}", "missing field")
    value = fields[name]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise DataError(
            where, label, f"expected {expected}, got {type(value).__name__}", "wrong field type"
        )
    if isinstance(value, str) and not value.strip():
        raise DataError(where, label, f"empty; expected {expected}", "empty field")
    return value


def require_strings(fields: dict[str, Any], name: str, where: str, minimum: int = 2) -> list[str]:
    """A list of at least ``minimum`` non-empty strings (answer choices)."""
    values = require(fields, name, list, where, f"at least {minimum} strings")
    if len(values) < minimum or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataError(
            where, name, f"expected a list of at least {minimum} non-empty strings", "bad choices"
        )
    if len(values) > len(LETTERS):
        raise DataError(where, name, f"more than {len(LETTERS)} choices", "bad choices")
    return values


QUESTION_PREFIX, ANSWER_CUE = "Question: ", "\nAnswer: "


def question_prompt(question: str) -> str:
    """The paper's prompt for generative tasks."""
    return f"{QUESTION_PREFIX}{question}{ANSWER_CUE}"


def question_of_prompt(prompt: str) -> str:
    """The question inside a prompt in the paper's format (``Question: ... Answer: ``, what
    seglm writes as each prediction's ``prompt``); any other prompt as it is."""
    if prompt.startswith(QUESTION_PREFIX) and prompt.endswith(ANSWER_CUE):
        return prompt[len(QUESTION_PREFIX) : -len(ANSWER_CUE)]
    return prompt


def choice_prompt(question: str, choices: list[str], context: str | None = None) -> str:
    """The paper's prompt for multiple choice: lettered options, an optional context line."""
    lines = [f"{QUESTION_PREFIX}{question}"]
    lines += [f"{LETTERS[i]}. {text}" for i, text in enumerate(choices)]
    if context is not None:
        lines.append(f"Context: {context}")
    return "\n".join(lines) + ANSWER_CUE


def label_index(value: Any, count: int, where: str, field_name: str, letters: bool = False) -> int:
    """The gold choice as an index, from an int or a digit string (the hub's labels) or, with
    ``letters``, an answer letter."""
    expected = f"an index 0-{count - 1}" + (" or a letter" if letters else "")
    if value is None:
        raise DataError(where, field_name, f"missing; expected {expected}", "missing field")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if letters and isinstance(value, str):
        return letter_index(value, count, where, field_name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(where, field_name, f"expected {expected}, got {value!r}", "bad label")
    if not 0 <= value < count:
        raise DataError(where, field_name, f"index {value} outside 0-{count - 1}", "bad label")
    return value


def letter_index(letter: str, count: int, where: str, field_name: str) -> int:
    """The index of an answer letter among ``count`` lettered choices."""
    index = LETTERS.find(letter.strip().upper()) if letter.strip() else -1
    if not 0 <= index < count:
        allowed = ", ".join(LETTERS[:count])
        raise DataError(
            where,
            field_name,
            f"unknown answer letter {letter!r}; expected one of {allowed}",
            "unknown answer letter",
        )
    return index


@dataclass
class Task:
    """Base of all tasks. Fields are options; class attributes describe the data.

    Options shared by every task:
    - ``prompt_style``: ``plain`` (the paper's ``Question: ... Answer:`` text) or ``chat`` (that
      text as the user turn of the tokenizer's chat template, ending with the assistant header);
    - ``tokenizer``: the tokenizer whose chat template ``chat`` uses;
    - ``on_error``: ``raise`` (default) stops at the first bad record; ``skip`` counts it in the
      load report and goes on.
    """

    name: ClassVar[str]
    answer_format: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    split_aliases: ClassVar[dict[str, str]] = {}
    # What a split holds, where its name does not say it (written in train_report.json).
    split_notes: ClassVar[dict[str, str]] = {}
    plain_max_length: ClassVar[int]  # token limit for the plain prompt (see default_max_length)
    max_new_tokens: ClassVar[int]
    stop_strings: ClassVar[tuple[str, ...]] = ("\nQuestion:",)

    prompt_style: str = "plain"
    tokenizer: Any = field(default=None, repr=False, compare=False)
    on_error: str = "raise"

    def __post_init__(self) -> None:
        check_choice("prompt_style", self.prompt_style, PROMPT_STYLES)
        check_choice("on_error", self.on_error, ERROR_POLICIES)
        if self.prompt_style == "chat" and getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                "prompt_style='chat' needs tokenizer=<a tokenizer with a chat template>"
                + ("" if self.tokenizer is None else "; this tokenizer has none")
            )

    @property
    def default_max_length(self) -> int:
        """The token limit to train with: the plain prompt's, plus room for a chat template."""
        return self.plain_max_length + (CHAT_TEMPLATE_MARGIN if self.prompt_style == "chat" else 0)

    # -- loading ---------------------------------------------------------------------------

    def load(self, split: str, data_dir: DataDir = None, limit: int | None = None) -> list[Example]:
        """The examples of ``split`` (the first ``limit`` of them when given)."""
        return self.load_with_report(split, data_dir, limit).examples

    def load_with_report(
        self, split: str, data_dir: DataDir = None, limit: int | None = None
    ) -> Loaded:
        """The examples of ``split`` and a report of what was read and skipped, and why."""
        split = self.resolve_split(split)
        report = LoadReport(task=self.name, split=split)
        examples: list[Example] = []
        for record in self.records(split, data_dir, report):
            if limit is not None and len(examples) >= limit:
                break
            report.records += 1
            try:
                examples.append(self.to_example(record))
            except SkippedRecord as error:
                report.skip(error)
            except DataError as error:
                if self.on_error == "raise":
                    raise
                report.skip(error)
        report.examples = len(examples)
        if report.records == 0 and limit != 0:
            where = report.source or f"task {self.name!r}, split {split!r}"
            raise DataError(where, None, "holds no records (an empty file?)", "empty")
        if report.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in report.skipped.items())
            logger.warning(
                "%s/%s: skipped %d records (%s)", self.name, split, report.skipped_total, reasons
            )
        return Loaded(examples, report)

    def resolve_split(self, split: str) -> str:
        split = self.split_aliases.get(split, split)
        if split not in self.splits:
            raise ValueError(
                f"task {self.name!r} has no split {split!r}; available: {', '.join(self.splits)}"
            )
        return split

    def describe_split(self, split: str) -> str:
        """What ``split`` holds, for reports."""
        split = self.resolve_split(split)
        return self.split_notes.get(split, f"the {split!r} split")

    def records(self, split: str, data_dir: DataDir, report: LoadReport) -> Iterator[Record]:
        """The raw records of ``split``; sets ``report.source``."""
        raise NotImplementedError

    def to_example(self, record: Record) -> Example:
        """One record as an example; raises :class:`DataError` for unusable records."""
        raise NotImplementedError

    # -- prompts ---------------------------------------------------------------------------

    def choice_example(
        self,
        example_id: str,
        question: str,
        choices: list[str],
        gold: int,
        context: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Example:
        """A multiple-choice example: the paper's lettered prompt, the gold letter as the
        target and reference, the question as ROSCOE's source."""
        return Example(
            id=example_id,
            prompt=self.render_prompt(choice_prompt(question, choices, context)),
            target=self.choice_target(choices, gold),
            reference=LETTERS[gold],
            source=question,
            choices=tuple(choices),
            label=gold,
            metadata=metadata or {},
        )

    def choice_target(self, choices: list[str], gold: int) -> str:
        """What a multiple-choice example trains on: the gold letter (the paper's)."""
        return LETTERS[gold]

    def loglik_query(self, example: Example) -> tuple[str, list[str]]:
        """lm-evaluation-harness's context and choices for log-likelihood scoring: the question
        alone (no letters), each choice a continuation."""
        if example.choices is None:
            raise ValueError(f"example {example.id!r} has no choices to score")
        return example.source, list(example.choices)

    def render_prompt(self, plain_prompt: str) -> str:
        """The prompt the model sees: the plain text, or it as a chat user turn."""
        if self.prompt_style == "plain":
            return plain_prompt
        messages = [{"role": "user", "content": plain_prompt.rstrip()}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


@dataclass
class ChoiceTask(Task):
    """A multiple-choice task. Option ``target``: the gold ``letter`` (the paper's), or ``text``,
    the letter and the answer's text (``B. the sun``): a one-token target gives an answer-only
    loss a single position to act on. Either way the reference is the letter, and exact match
    reads the generation's leading letter."""

    target: str = "letter"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("target", self.target, CHOICE_TARGETS)

    def choice_target(self, choices: list[str], gold: int) -> str:
        letter = LETTERS[gold]
        return f"{letter}. {choices[gold]}" if self.target == "text" else letter


def option_types(task_class: type[Task]) -> dict[str, Any]:
    """The options a task takes (its fields but the tokenizer) and the type of each, as
    :mod:`seglm.schema` reads them from YAML or command-line text."""
    hints = typing.get_type_hints(task_class)
    return {
        option.name: schema_type(hints[option.name])
        for option in dataclasses.fields(task_class)
        if option.name != "tokenizer"
    }


def parse_option_text(task_class: type[Task], items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` as typed task options (bool, int, float or str)."""
    types = option_types(task_class)
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"task option {item!r} must look like key=value")
        if key not in types:
            raise ValueError(
                f"task {task_class.name!r} has no option {key!r}; options: {', '.join(types)}"
            )
        options[key] = convert_option(key, text, types[key])
    return options


def convert_option(key: str, value: Any, kind: Any) -> Any:
    """A task option's value (text from the command line, or a YAML value) as its type, or a
    ValueError naming the option and what it expects."""
    return validate(_adapter(kind), value, key, noun="option")


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)
