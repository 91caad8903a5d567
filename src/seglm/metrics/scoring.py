"""Score predictions against references, per example and over a predictions file.

The answer format comes from the task (``Task.answer_format``): ``gsm8k`` and ``mathqa`` get exact
match and the step metrics, ``choice`` gets exact match on the answer letter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from seglm.json_lines import iter_jsonl

from .exact_match import (
    NUMERIC_FORMATS,
    check_answer_format,
    check_answer_match,
    exact_match_scores,
)
from .steps import STEP_METRICS, extract_formulas, step_metrics

METRICS_BY_FORMAT: dict[str, tuple[str, ...]] = {
    "gsm8k": ("exact_match", "exact_match_flexible", *STEP_METRICS),
    "mathqa": ("exact_match", "exact_match_flexible", *STEP_METRICS),
    "choice": ("exact_match",),
    "text": ("exact_match",),
}

Scores = dict[str, float | None]


class PredictionsFileError(ValueError):
    """A predictions file that cannot be scored; the message names the file and line."""


@dataclass(frozen=True)
class ScoredExample:
    line: int
    scores: Scores


def score_prediction(
    answer_format: str, prediction: str, reference: str, answer_match: str = "seglm"
) -> Scores:
    """Every metric of ``answer_format`` for one example; None where a metric does not apply.
    ``answer_match="lm-eval"`` reads the exact match of the ``gsm8k`` format as
    lm-evaluation-harness does (the step metrics are seglm's either way).

    Raises ValueError when the reference has no answer (``#### N`` or a letter).
    """
    check_answer_format(answer_format)
    scores: Scores = dict(exact_match_scores(answer_format, prediction, reference, answer_match))
    if answer_format in NUMERIC_FORMATS:
        predicted = extract_formulas(answer_format, prediction)
        gold = extract_formulas(answer_format, reference)
        scores.update(step_metrics(answer_format, predicted, gold))
    return scores


def aggregate(per_example: Iterable[Mapping[str, float | None]]) -> dict[str, float]:
    """The mean of each metric over the examples where it is not None.

    A metric that is None everywhere has no mean and is left out.
    """
    examples = list(per_example)
    totals: dict[str, float] = {}
    for scores in examples:
        for name, value in scores.items():
            if value is not None:
                totals[name] = totals.get(name, 0.0) + value
    counts = count_scored(examples)
    return {name: totals[name] / count for name, count in counts.items() if count}


def count_scored(per_example: Iterable[Mapping[str, float | None]]) -> dict[str, int]:
    """For each metric, how many examples have a value (the denominator of its mean)."""
    counts: dict[str, int] = {}
    for scores in per_example:
        for name, value in scores.items():
            counts[name] = counts.get(name, 0) + (value is not None)
    return counts


def score_file(answer_format: str, path: Path, answer_match: str = "seglm") -> list[ScoredExample]:
    """Score a JSON Lines file of ``{"prediction": ..., "reference": ...}`` objects.

    Blank lines are skipped; any other problem raises PredictionsFileError naming the line.
    """
    check_answer_format(answer_format)
    check_answer_match(answer_match, answer_format)
    scored = []
    for line_number, prediction, reference in _read_predictions(path):
        try:
            scores = score_prediction(answer_format, prediction, reference, answer_match)
        except ValueError as error:
            raise PredictionsFileError(f"{path}, line {line_number}: {error}") from None
        scored.append(ScoredExample(line_number, scores))
    if not scored:
        raise PredictionsFileError(
            f"{path} holds no predictions: expected one JSON object per line "
            "with 'prediction' and 'reference'"
        )
    return scored


def _read_predictions(path: Path) -> Iterable[tuple[int, str, str]]:
    for line_number, record in iter_jsonl(path, error=PredictionsFileError):
        where = f"{path}, line {line_number}"
        prediction = _text_field(record, "prediction", where)
        yield line_number, prediction, _text_field(record, "reference", where)


def _text_field(record: dict[str, object], field: str, where: str) -> str:
    if field not in record:
        raise PredictionsFileError(f"{where}: missing field {field!r}")
    value = record[field]
    if not isinstance(value, str):
        raise PredictionsFileError(
            f"{where}: field {field!r} must be a string, got {type(value).__name__}"
        )
    return value
