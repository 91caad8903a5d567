"""Reasoning-step metrics on the formulas ``<<...>>`` of a prediction and its reference.

docs/metrics.md defines them on P (the predicted formulas, a list) and L (the reference's). Here
each formula is first normalised (see :func:`parse_step`), so ``48 / 2 = 24`` and ``48/2=24`` are
the same step. The metrics divided by list lengths (overlap, dice, precision, recall) count common
steps with multiplicity, so a reference that repeats a computation scores 1 against itself.
Zero denominators (see docs/metrics.md):

* a reference without formulas has no steps to compare with: every step metric is None
  ("not applicable", left out of the means);
* otherwise every metric is a number: a prediction without formulas scores 0 on the agreement
  metrics, 1 on ``missing_steps`` and 0 on ``extra_steps`` and ``repetitions``; the two
  error-type shares are 0 when the prediction has no wrong formula.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .arithmetic import (
    ParseError,
    commutative_form,
    operands,
    operators,
    parse_call,
    parse_equation,
    render,
)
from .exact_match import NUMERIC_FORMATS, check_answer_format

STEP_METRICS = (
    "iou",
    "overlap",
    "dice",
    "precision",
    "recall",
    "missing_steps",
    "extra_steps",
    "repetitions",
    "wrong_operators",
    "inverted_operands",
    "real_iou",
)

# A calculator annotation; its inner text is the formula. Tasks and ROSCOE use the same pattern.
FORMULA = re.compile(r"<<([^<>]+)>>")


@dataclass(frozen=True)
class Step:
    """One formula, normalised; ``operators`` is None when the formula could not be parsed."""

    key: str  # canonical text: formulas with equal keys are the same step
    commutative_key: str  # equal for formulas equal up to commutativity of + and ×
    left_commutative_key: str  # the same without the stated result
    operators: tuple[str, ...] | None
    operands: tuple[float | str, ...] | None


def extract_formulas(answer_format: str, text: str) -> list[str]:
    """The inner strings of the ``<<...>>`` formulas, in order (P or L in docs/metrics.md)."""
    _check_step_format(answer_format)
    return [formula.strip() for formula in FORMULA.findall(text)]


def parse_step(answer_format: str, formula: str) -> Step:
    """Normalise one formula; text that does not parse is kept, without spaces, as its own key."""
    _check_step_format(answer_format)
    try:
        if answer_format == "mathqa":
            node = parse_call(formula)
            key = commutative_form(node)
            return Step(render(node), key, key, operators(node), operands(node))
        equation = parse_equation(formula)
    except ParseError:
        raw = re.sub(r"\s+", "", formula)
        # The space keeps it apart from every parsed formula's equivalence key (those have none).
        return Step(raw, f"unparsed {raw}", f"unparsed {raw}", None, None)
    return Step(
        equation.canonical,
        equation.commutative_key,
        commutative_form(equation.left),
        equation.operators,
        equation.operands,
    )


def step_metrics(
    answer_format: str, predicted: Sequence[str], reference: Sequence[str]
) -> dict[str, float | None]:
    """All step metrics for one example, from the formula strings of each side."""
    if not reference:
        return dict.fromkeys(STEP_METRICS)
    predicted_steps = [parse_step(answer_format, formula) for formula in predicted]
    reference_steps = [parse_step(answer_format, formula) for formula in reference]
    return _metrics_from_steps(predicted_steps, reference_steps)


def _metrics_from_steps(predicted: list[Step], reference: list[Step]) -> dict[str, float | None]:
    p_keys = [step.key for step in predicted]
    l_keys = [step.key for step in reference]
    p_set, l_set = set(p_keys), set(l_keys)
    # Counted with multiplicity, so a formula that the reference itself repeats (two equal
    # computations) can be matched twice and a reference scores 1 against itself.
    common = sum((Counter(p_keys) & Counter(l_keys)).values())
    wrong = _unique_steps(step for step in predicted if step.key not in l_set)
    missing = _unique_steps(step for step in reference if step.key not in p_set)
    return {
        "iou": _iou(p_set, l_set),
        "overlap": _share(common, min(len(p_keys), len(l_keys))),
        "dice": 2 * common / (len(p_keys) + len(l_keys)),
        "precision": _share(common, len(p_keys)),
        "recall": common / len(l_keys),
        "missing_steps": len(l_set - p_set) / len(l_set),
        "extra_steps": len(p_set - l_set) / len(l_set),
        "repetitions": _share(len(p_keys) - len(p_set), len(p_keys)),
        "wrong_operators": _share(sum(_has_wrong_operators(w, missing) for w in wrong), len(wrong)),
        "inverted_operands": _share(
            sum(_has_inverted_operands(w, missing) for w in wrong), len(wrong)
        ),
        "real_iou": _iou(
            {s.commutative_key for s in predicted}, {s.commutative_key for s in reference}
        ),
    }


def _has_wrong_operators(wrong: Step, missing: list[Step]) -> bool:
    """Same operands in the same order as a missing reference step, other operators."""
    if wrong.operators is None:
        return False
    return any(
        step.operators is not None
        and step.operands == wrong.operands
        and step.operators != wrong.operators
        for step in missing
    )


def _has_inverted_operands(wrong: Step, missing: list[Step]) -> bool:
    """Same operators and operand multiset as a missing reference step, in another order that
    commutativity does not explain (``5-3`` for ``3-5``, but not ``3*2`` for ``2*3``)."""
    if wrong.operators is None or wrong.operands is None:
        return False
    wrong_operands = Counter(wrong.operands)
    return any(
        step.operators == wrong.operators
        and step.operands != wrong.operands
        and Counter(step.operands) == wrong_operands
        and step.left_commutative_key != wrong.left_commutative_key
        for step in missing
        if step.operands is not None
    )


def _unique_steps(steps: Iterable[Step]) -> list[Step]:
    unique: dict[str, Step] = {}
    for step in steps:
        unique.setdefault(step.key, step)
    return list(unique.values())


def _iou(first: set[str], second: set[str]) -> float:
    return len(first & second) / len(first | second)


def _share(count: int, total: int) -> float:
    # total is 0 only when the prediction has no formulas (or no wrong ones): 0 by the module doc.
    return count / total if total else 0.0


def _check_step_format(answer_format: str) -> None:
    check_answer_format(answer_format)
    if answer_format not in NUMERIC_FORMATS:
        raise ValueError(f"answer format {answer_format!r} has no formulas")
