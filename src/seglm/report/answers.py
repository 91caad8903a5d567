"""What the models answer: the distribution of final answers per cell and arm, collapse onto
one answer, and for multiple choice the best constant answer, chosen on the training split.

A model can score well above zero by answering the same thing every time: on a multiple-choice
test whose most common answer is A, "A" to every question scores that answer's share. Exact match
alone does not show it; the answers do. The final answer of a prediction is read the way exact
match reads it (:func:`seglm.metrics.exact_match.extract_answer` with the task's answer format):
the leading letter of a choice, the number after ``####``. A prediction with no readable answer
counts as no answer, not as an answer a model collapsed onto.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from seglm.experiments import GridError
from seglm.metrics.exact_match import CHOICE_FORMAT, extract_answer, reference_answer
from seglm.report.load import Arm, Group
from seglm.stats import Estimate, bootstrap_mean

# An arm is collapsed when its cells' most common answer is, on average over its seeds, more
# than this share of their predictions (docs/experiments.md, "Collapse").
COLLAPSE_THRESHOLD = 0.8
NO_ANSWER = "none"


@dataclass(frozen=True)
class CellAnswers:
    """The final answers of one cell (one seed of an arm): how many predictions gave each
    (most common first; :data:`NO_ANSWER` for those with none)."""

    seed: int | None
    counts: dict[str, int]
    total: int

    @property
    def most_common(self) -> tuple[str | None, float]:
        """The most common readable answer and its share of all predictions."""
        answered = [(answer, n) for answer, n in self.counts.items() if answer != NO_ANSWER]
        if not answered or not self.total:
            return None, 0.0
        answer, count = answered[0]
        return answer, count / self.total

    @property
    def distinct(self) -> int:
        """How many different readable answers the cell gave."""
        return sum(answer != NO_ANSWER for answer in self.counts)


@dataclass(frozen=True)
class AnswerDistribution:
    """An arm's final answers: each cell's, their shares pooled over the cells (most common
    first), and the mean over cells of the share of the cell's most common answer."""

    cells: list[CellAnswers]
    shares: dict[str, float]
    top_share: float

    @property
    def collapsed(self) -> bool:
        return self.top_share > COLLAPSE_THRESHOLD


@dataclass(frozen=True)
class ConstantAnswer:
    """The answer most common in the training split, and its exact match on the evaluated
    examples (``estimate``); ``problem`` says why it is missing when the split could not be
    read."""

    split: str
    answer: str | None = None
    train_examples: int = 0
    train_shares: dict[str, float] | None = None
    estimate: Estimate | None = None
    problem: str | None = None


def answer_format(group: Group) -> str:
    """The answer format of the group's task, with the options it was evaluated with."""
    return _task(group).answer_format


def _task(group: Group) -> Any:
    from seglm.tasks import get_task

    options = dict(group.evaluation.get("task_options") or {})
    # The answers do not depend on how the prompt is rendered, and a chat prompt needs the
    # tokenizer: plain prompts read the same data.
    options["prompt_style"] = "plain"
    try:
        return get_task(str(group.evaluation.get("task", group.task)), **options)
    except ValueError as error:
        raise GridError(f"{group.title}: cannot read its task's answers: {error}") from None


def final_answer(answer_format: str, text: str) -> str:
    """A prediction's final answer as text (a number without a needless ``.0``)."""
    value = extract_answer(answer_format, text)
    if value is None:
        return NO_ANSWER
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def answer_distribution(arm: Arm, answer_format: str) -> AnswerDistribution:
    cells = []
    pooled: Counter[str] = Counter()
    for seed, predictions in zip(arm.seeds, arm.predictions, strict=True):
        counts = Counter(final_answer(answer_format, text) for text in predictions)
        pooled += counts
        cells.append(CellAnswers(seed, dict(counts.most_common()), len(predictions)))
    total = sum(pooled.values())
    shares = {answer: n / total for answer, n in pooled.most_common()} if total else {}
    top = sum(cell.most_common[1] for cell in cells) / len(cells) if cells else 0.0
    return AnswerDistribution(cells, shares, top)


def constant_answer(
    group: Group, train_split: str, data_dir: str | None, resamples: int, seed: int
) -> ConstantAnswer | None:
    """For a multiple-choice task, the best constant answer: the most common answer of the
    training split (ties: the first letter), scored on the group's evaluated examples. None for
    other tasks; a split that cannot be read gives the reason instead."""
    task = _task(group)
    if task.answer_format != CHOICE_FORMAT:
        return None
    try:
        examples = task.load(train_split, data_dir=data_dir)
    except Exception as error:  # any loader failure means the same here: no training answers
        return ConstantAnswer(train_split, problem=f"{type(error).__name__}: {error}")
    counts = Counter(reference_answer(CHOICE_FORMAT, e.reference) for e in examples)
    answer = min(counts, key=lambda letter: (-counts[letter], letter))
    shares = {letter: counts[letter] / len(examples) for letter in sorted(counts)}
    right = [
        float(reference_answer(CHOICE_FORMAT, reference) == answer)
        for reference in group.references
    ]
    estimate = bootstrap_mean(right, resamples, seed=seed)
    return ConstantAnswer(train_split, str(answer), len(examples), shares, estimate)
