"""Final-answer extraction and exact match (docs/metrics.md, "Exact match").

Numeric formats compare the number after ``#### `` numerically (commas and ``$`` stripped,
negatives allowed, a trailing period ignored). GSM8K answers must be equal; MathQA answers are
floats taken from the answer options, so they match within a relative tolerance of 1e-4.
The strict and the flexible answer read numbers with one reader (``_NUMBER``), so a text that
is only ``#### X`` gives both the same answer. Multiple choice compares answer letters.

``answer_match="lm-eval"`` scores the ``gsm8k`` format as lm-evaluation-harness's ``gsm8k`` task
does (its strict-match and flexible-extract filters, then its exact_match settings), to compare
with published numbers; docs/metrics.md lists every difference from the default.
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

# A number: digits with commas between them, an optional decimal part, then an optional "$" and
# minus sign before it. It must not continue a word, a number or a closing parenthesis ("x2",
# "v1.5", "(3)-2"). Commas that are not thousands separators ("1,8") make it unreadable, not two
# numbers, and so does a fraction bar on either side ("3/4", "2 / 3"). A minus sign directly
# before the number is a sign unless it follows an operand ("16-3" is 16 and 3); one separated
# by spaces ("- 10") only where no operand precedes it ("#### - 10" is -10, "16 - 3" is 3).
_NUMBER = re.compile(
    r"(?<![\w.)])\$?\s*(?:(?P<sign>-)(?P<gap>\s*))?\$?\s*"
    r"(?P<digits>\d+(?:,\d+)*(?:\.\d*)?|\.\d+)"
)
_WELL_FORMED = re.compile(NUMBER_PATTERN)
_OPERAND_END = re.compile(r"[\w.)%]")
_FRACTION_AFTER = re.compile(r"\s*/\s*\d")
_FRACTION_BEFORE = re.compile(r"\d\s*/\s*$")
_MARKER = re.compile(r"####\s*")
# The answer letters a choice task may use: extraction must not read a word such as "I" as one.
CHOICE_LETTERS = "ABCDEFGH"
_LETTERS = f"{CHOICE_LETTERS[0]}-{CHOICE_LETTERS[-1]}"
_LONE_LEADING_LETTER = re.compile(rf"\s*\(?([{_LETTERS}])(?:[.):,]|\s*$|\s*\n)")
_LETTER_AFTER_ANSWER = re.compile(rf"(?i:answer)\s*:\s*\(?([{_LETTERS}])\b")


# How exact match reads answers: seglm's numeric comparison, or lm-evaluation-harness's gsm8k
# task (lm_eval/tasks/gsm8k/gsm8k.yaml, version 3.0: its two filters and exact_match settings).
ANSWER_MATCHES = ("seglm", "lm-eval")
LM_EVAL_FORMATS = ("gsm8k",)
LM_EVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # strict-match: the first match
LM_EVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # flexible-extract: the last
LM_EVAL_FALLBACK = "[invalid]"  # what its regex filter returns without a match
LM_EVAL_IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")  # regexes_to_ignore; ignore_case: true
LM_EVAL_STOPS = ("Question:", "</s>", "<|im_end|>")  # generation_kwargs.until


def check_answer_match(answer_match: str, answer_format: str) -> None:
    if answer_match not in ANSWER_MATCHES:
        known = ", ".join(ANSWER_MATCHES)
        raise ValueError(f"unknown answer match {answer_match!r} (known: {known})")
    if answer_match == "lm-eval" and answer_format not in LM_EVAL_FORMATS:
        raise ValueError(
            "answer match 'lm-eval' reproduces lm-evaluation-harness's gsm8k scoring, for the "
            f"{', '.join(LM_EVAL_FORMATS)} answer format only; got format {answer_format!r}"
        )


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
    for marker in _MARKER.finditer(text):
        match = _NUMBER.match(text, marker.end())
        if match is not None:
            return _read_number(match, text)
    return None


def extract_last_number(text: str) -> float | None:
    """The flexible answer: the last number anywhere in the text (None if it is unreadable)."""
    last = None
    for last in _NUMBER.finditer(text):  # noqa: B007
        pass
    return None if last is None else _read_number(last, text)


def _read_number(match: re.Match[str], text: str) -> float | None:
    digits = match.group("digits")
    if not _WELL_FORMED.fullmatch(digits):
        return None
    if _FRACTION_AFTER.match(text, match.end()) or _FRACTION_BEFORE.search(
        text, max(0, match.start() - 8), match.start()
    ):
        return None
    value = parse_number(digits)
    if match.group("sign") is None:
        return value
    if match.group("gap"):
        before = text[: match.start()].rstrip()
        if before and _OPERAND_END.match(before[-1]):
            return value  # "16 - 3": a subtraction
    return -value


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


def exact_match_scores(
    answer_format: str, prediction: str, reference: str, answer_match: str = "seglm"
) -> dict[str, float]:
    """``exact_match`` (and, for numeric formats, ``exact_match_flexible``) as 0.0 or 1.0."""
    check_answer_match(answer_match, answer_format)
    gold = reference_answer(answer_format, reference)
    if answer_match == "lm-eval":
        return lm_eval_scores(prediction, reference)
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


def lm_eval_scores(prediction: str, reference: str) -> dict[str, float]:
    """lm-evaluation-harness's gsm8k exact match: the generation cut at its stop strings, the
    strict-match filter (the first ``#### <digits, . and ,>``) or the flexible-extract filter
    (the last number-like run), then both answer and reference with ``regexes_to_ignore``
    removed and lower-cased, compared as strings."""
    for stop in LM_EVAL_STOPS:
        prediction = prediction.split(stop)[0]
    gold = lm_eval_normalize(reference)
    strict = lm_eval_normalize(lm_eval_filter(LM_EVAL_STRICT, prediction, 0))
    flexible = lm_eval_normalize(lm_eval_filter(LM_EVAL_FLEXIBLE, prediction, -1))
    return {"exact_match": float(strict == gold), "exact_match_flexible": float(flexible == gold)}


def lm_eval_filter(pattern: re.Pattern[str], text: str, group_select: int) -> str:
    """lm-eval's ``regex`` filter: match ``group_select`` of ``findall`` (its first non-empty
    group when the pattern has several), stripped, or the fallback."""
    matches = pattern.findall(text)
    if not matches:
        return LM_EVAL_FALLBACK
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next(group for group in match if group)
    return match.strip()


def lm_eval_normalize(text: str) -> str:
    for pattern in LM_EVAL_IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


def _numbers_match(predicted: float | str | None, gold: float, tolerance: float) -> bool:
    if not isinstance(predicted, float):
        return False
    return math.isclose(predicted, gold, rel_tol=tolerance, abs_tol=0.0)


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
