"""Final-answer extraction and exact match (SPEC section 4).

Numeric formats compare the number after ``#### `` numerically (commas and ``$`` stripped,
negatives allowed, a trailing period ignored). GSM8K answers must be equal; MathQA answers are
floats taken from the answer options, so they match within a relative tolerance of 1e-4.
Multiple choice compares answer letters.
"""

from __future__ import annotations

import math
import re

from .arithmetic import NUMBER_PATTERN, parse_number

NUMERIC_FORMATS = ("gsm8k", "mathqa")
CHOICE_FORMAT = "choice"
TEXT_FORMAT = "text"  # free text (the user's jsonl data): the whole answer must match
ANSWER_FORMATS = (*NUMERIC_FORMATS, CHOICE_FORMAT, TEXT_FORMAT)

# Relative tolerance per numeric format: GSM8K answers are exact; MathQA options are rounded.
RELATIVE_TOLERANCE = {"gsm8k": 0.0, "mathqa": 1e-4}

# A minus sign counts only where it cannot be a subtraction: "16-3" is 16 and 3, not -3.
_NUMBER = re.compile(rf"(?<![\w.])-?\$?(?:{NUMBER_PATTERN})")
_STRICT_ANSWER = re.compile(rf"####\s*(?P<number>-?\s*\$?\s*(?:{NUMBER_PATTERN}))")
# The answer letters a choice task may use: extraction must not read a word such as "I" as one.
CHOICE_LETTERS = "ABCDEFGH"
_LETTERS = f"{CHOICE_LETTERS[0]}-{CHOICE_LETTERS[-1]}"
_LONE_LEADING_LETTER = re.compile(rf"\s*\(?([{_LETTERS}])(?:[.):,]|\s*$|\s*\n)")
_LETTER_AFTER_ANSWER = re.compile(rf"(?i:answer)\s*:\s*\(?([{_LETTERS}])\b")


def check_answer_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        known = ", ".join(ANSWER_FORMATS)
        raise ValueError(f"unknown answer format {answer_format!r} (known: {known})")


def extract_answer(answer_format: str, text: str) -> float | str | None:
    """The strict answer: the number after the first ``####``, or the answer letter."""
    check_answer_format(answer_format)
    if answer_format == CHOICE_FORMAT:
        return extract_choice(text)
    if answer_format == TEXT_FORMAT:
        return normalize_text(text)
    match = _STRICT_ANSWER.search(text)
    if match is None:
        return None
    return parse_number(re.sub(r"\s", "", match.group("number")))


def extract_last_number(text: str) -> float | None:
    """The flexible answer: the last number anywhere in the text."""
    numbers = _NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def extract_choice(text: str) -> str | None:
    """A lone letter at the start (``"C"``, ``"C. text"``, ``"(C)"``), else the letter after
    the first ``Answer:``; upper case, or None."""
    match = _LONE_LEADING_LETTER.match(text) or _LETTER_AFTER_ANSWER.search(text)
    return match.group(1).upper() if match else None


def normalize_text(text: str) -> str:
    """Free-text answers compare after collapsing white space and trimming the ends."""
    return " ".join(text.split())


def reference_answer(answer_format: str, reference: str) -> float | str:
    """The reference's answer, or a ValueError saying what the reference lacks."""
    if answer_format == CHOICE_FORMAT:
        stripped = reference.strip()
        letter = stripped.upper() if len(stripped) == 1 else extract_choice(reference)
        if letter is None or not letter.isalpha():
            raise ValueError(f"reference has no answer letter: {_shorten(reference)}")
        return letter
    if answer_format == TEXT_FORMAT:
        if not reference.strip():
            raise ValueError("reference answer text is empty")
        return normalize_text(reference)
    answer = extract_answer(answer_format, reference)
    if answer is None:
        raise ValueError(f"reference has no '#### <number>' answer: {_shorten(reference)}")
    return answer


def exact_match_scores(answer_format: str, prediction: str, reference: str) -> dict[str, float]:
    """``exact_match`` (and, for numeric formats, ``exact_match_flexible``) as 0.0 or 1.0."""
    gold = reference_answer(answer_format, reference)
    if answer_format == CHOICE_FORMAT:
        return {"exact_match": float(extract_choice(prediction) == gold)}
    if answer_format == TEXT_FORMAT:
        return {"exact_match": float(normalize_text(prediction) == gold)}
    assert isinstance(gold, float)
    strict = extract_answer(answer_format, prediction)
    flexible = extract_last_number(prediction)
    tolerance = RELATIVE_TOLERANCE[answer_format]
    return {
        "exact_match": float(_numbers_match(strict, gold, tolerance)),
        "exact_match_flexible": float(_numbers_match(flexible, gold, tolerance)),
    }


def _numbers_match(predicted: float | str | None, gold: float, tolerance: float) -> bool:
    if not isinstance(predicted, float):
        return False
    return math.isclose(predicted, gold, rel_tol=tolerance, abs_tol=0.0)


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
