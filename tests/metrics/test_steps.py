import json
from pathlib import Path

import pytest

from seglm.metrics import STEP_METRICS, extract_formulas, score_prediction, step_metrics
from seglm.metrics.steps import parse_step

# The offline data copy sits beside the repository (../shared/data).
GSM8K_TEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"
needs_gsm8k = pytest.mark.skipif(not GSM8K_TEST.exists(), reason="offline GSM8K copy not here")


def _gsm8k_references() -> list[str]:
    with GSM8K_TEST.open(encoding="utf-8") as lines:
        return [json.loads(line)["answer"] for line in lines]


def test_extract_formulas() -> None:
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips.\n<< 48+24=72 >> #### 72"
    assert extract_formulas("gsm8k", text) == ["48/2=24", "48+24=72"]
    assert extract_formulas("mathqa", "<<divide(n0,n1)>> <<add(#0,n1)>>") == [
        "divide(n0,n1)",
        "add(#0,n1)",
    ]
    assert extract_formulas("gsm8k", "no formulas, <<unclosed") == []
    with pytest.raises(ValueError, match="has no formulas"):
        extract_formulas("choice", "<<1+1=2>>")


def test_normalised_formulas_are_the_same_step() -> None:
    assert parse_step("gsm8k", "48 / 2 = 24").key == parse_step("gsm8k", "48/2=24.0").key
    assert parse_step("gsm8k", "50%*80=40").key == parse_step("gsm8k", "0.5*80=40").key
    assert parse_step("mathqa", "add( n0, CONST_1 )").key == "add(n0,const_1)"
    unparsable = parse_step("gsm8k", "2 x 3 = 6")
    assert unparsable.key == "2x3=6"
    assert unparsable.operators is None


def test_counts_and_repetitions() -> None:
    # Sets: P = {48/2=24, 24+48=72, 72-10=62}, L = {48/2=24, 48+24=72, 72-12=60};
    # one common step, and P repeats 48/2=24 (written once with spaces).
    predicted = ["48/2=24", "48 / 2 = 24", "24+48=72", "72-10=62"]
    reference = ["48/2=24", "48+24=72", "72-12=60"]
    assert step_metrics("gsm8k", predicted, reference) == pytest.approx(
        {
            "iou": 1 / 5,
            "overlap": 1 / 3,  # 1 / min(4, 3)
            "dice": 2 / 7,
            "precision": 1 / 4,
            "recall": 1 / 3,
            "missing_steps": 2 / 3,
            "extra_steps": 2 / 3,
            "repetitions": 1 / 4,
            "wrong_operators": 0.0,
            "inverted_operands": 0.0,  # 24+48 for 48+24 is commutativity, not an inversion
            "real_iou": 2 / 4,  # 24+48=72 now equals 48+24=72
        }
    )


def test_error_types_are_counted_apart() -> None:
    # Wrong predicted steps: 3-5=-2 (inverted 5-3), 2+4=6 (wrong operator for 2*4), 7*7=49.
    predicted = ["3-5=-2", "2+4=6", "8+1=9", "7*7=49"]
    reference = ["5-3=2", "2*4=8", "8+1=9"]
    scores = step_metrics("gsm8k", predicted, reference)
    assert scores["wrong_operators"] == pytest.approx(1 / 3)
    # The research code added the wrong-operator match here too and reported 2/3.
    assert scores["inverted_operands"] == pytest.approx(1 / 3)
    assert scores["iou"] == pytest.approx(1 / 6)
    assert scores["extra_steps"] == pytest.approx(1.0)
    assert scores["real_iou"] == pytest.approx(1 / 6)


def test_inverted_division() -> None:
    scores = step_metrics("gsm8k", ["2/6=0.33"], ["6/2=3"])
    assert scores["inverted_operands"] == 1.0
    assert scores["wrong_operators"] == 0.0


def test_inverted_operands_compare_multisets_not_sets() -> None:
    # Same operators and operand *set* {9, 3}, but not the same multiset.
    assert step_metrics("gsm8k", ["9-9-3=-3"], ["9-3-3=3"])["inverted_operands"] == 0.0
    assert step_metrics("gsm8k", ["3-9-9=-15"], ["9-3-9=-3"])["inverted_operands"] == 1.0


def test_a_wrong_result_is_not_a_wrong_operator() -> None:
    scores = step_metrics("gsm8k", ["2*3=7"], ["2*3=6"])
    assert scores["wrong_operators"] == 0.0
    assert scores["inverted_operands"] == 0.0
    assert scores["real_iou"] == 0.0


def test_real_iou_counts_commutative_variants() -> None:
    scores = step_metrics("gsm8k", ["3*2=6", "1+2+3=6"], ["2*3=6", "3+(2+1)=6"])
    assert scores["iou"] == 0.0
    assert scores["real_iou"] == 1.0


def test_unparsable_prediction_is_wrong_but_unclassified() -> None:
    scores = step_metrics("gsm8k", ["2 x 3 = 6"], ["2*3=6"])
    assert scores["iou"] == 0.0
    assert scores["wrong_operators"] == 0.0
    assert scores["extra_steps"] == 1.0
    # Text that happens to look like an internal equivalence key is still not equivalent.
    assert step_metrics("gsm8k", ["*(2,3)=6"], ["2*3=6"])["real_iou"] == 0.0


def test_unparsable_steps_still_match_each_other() -> None:
    assert step_metrics("gsm8k", ["2 x 3 = 6"], ["2x3=6"])["iou"] == 1.0
    assert step_metrics("gsm8k", ["2 x 3 = 6"], ["2x3=6"])["real_iou"] == 1.0


def test_mathqa_steps() -> None:
    predicted = ["divide(n0,n1)", "multiply(#0,const_100)", "add(n2,#1)"]
    reference = ["divide(n1,n0)", "multiply(const_100,#0)", "subtract(n2,#1)"]
    scores = step_metrics("mathqa", predicted, reference)
    assert scores["iou"] == 0.0
    assert scores["real_iou"] == pytest.approx(1 / 5)
    assert scores["wrong_operators"] == pytest.approx(1 / 3)  # add for subtract
    assert scores["inverted_operands"] == pytest.approx(1 / 3)  # divide(n0,n1)


def test_reference_without_formulas_makes_step_metrics_not_applicable() -> None:
    assert step_metrics("gsm8k", [], []) == dict.fromkeys(STEP_METRICS)
    assert step_metrics("gsm8k", ["1+1=2"], []) == dict.fromkeys(STEP_METRICS)


def test_prediction_without_formulas_scores_worst_agreement() -> None:
    assert step_metrics("gsm8k", [], ["1+1=2", "2*3=6"]) == {
        "iou": 0.0,
        "overlap": 0.0,
        "dice": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "missing_steps": 1.0,
        "extra_steps": 0.0,
        "repetitions": 0.0,
        "wrong_operators": 0.0,
        "inverted_operands": 0.0,
        "real_iou": 0.0,
    }


def test_reference_repeating_a_step_scores_one_against_itself() -> None:
    # GSM8K test #233 computes 36/3 twice, for two different people.
    steps = ["36/3=12", "36/3=12", "12+12=24", "36-24=12"]
    scores = step_metrics("gsm8k", steps, steps)
    assert scores["precision"] == scores["recall"] == scores["dice"] == scores["overlap"] == 1.0
    assert scores["repetitions"] == 0.25


@needs_gsm8k
def test_real_reference_against_itself_is_perfect() -> None:
    reference = _gsm8k_references()[0]  # Janet's ducks: 16-3-4=9, 9*2=18, #### 18
    scores = score_prediction("gsm8k", reference, reference)
    assert scores == {
        "exact_match": 1.0,
        "exact_match_flexible": 1.0,
        "iou": 1.0,
        "overlap": 1.0,
        "dice": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "missing_steps": 0.0,
        "extra_steps": 0.0,
        "repetitions": 0.0,
        "wrong_operators": 0.0,
        "inverted_operands": 0.0,
        "real_iou": 1.0,
    }
    # The paper's training target (annotations and the final line only) scores the same.
    assert score_prediction("gsm8k", "<<16-3-4=9>> <<9*2=18>> #### 18", reference) == scores


@needs_gsm8k
def test_every_gsm8k_test_formula_parses() -> None:
    formulas = [f for text in _gsm8k_references() for f in extract_formulas("gsm8k", text)]
    assert len(formulas) > 4000
    assert all(parse_step("gsm8k", formula).operators is not None for formula in formulas)
