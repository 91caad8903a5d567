import pytest

from seglm.metrics import extract_answer, extract_choice, extract_last_number
from seglm.metrics.exact_match import exact_match_scores, reference_answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<<48+24=72>> #### 72", 72.0),
        ("#### -5", -5.0),
        ("#### 1,000", 1000.0),
        ("#### $1,234.50.", 1234.5),
        ("####72", 72.0),
        ("#### 3\nQuestion: ...\n#### 4", 3.0),
        ("The answer is 72.", None),
        ("#### seventy", None),
    ],
)
def test_extract_answer_gsm8k(text: str, answer: float | None) -> None:
    assert extract_answer("gsm8k", text) == answer


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("16 - 3 - 4 = 9 eggs, so 9 * 2 = 18.", 18.0),
        ("She owes -5 dollars", -5.0),
        ("16-3", 3.0),
        ("It costs $1,000,000 in total", 1000000.0),
        ("1,2,3", 3.0),
        ("x2 and v1.5", None),
        ("no numbers here", None),
    ],
)
def test_extract_last_number(text: str, number: float | None) -> None:
    assert extract_last_number(text) == number


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("C", "C"),
        (" C. plants sprouting", "C"),
        ("(B)", "B"),
        ("D\nQuestion: next one\nAnswer: A", "D"),
        ("I think so.\nAnswer: D", "D"),
        ("answer:(b) ... Answer: C", "C"),
        ("A man walks in", None),
        ("Answer: a bee", None),
        ("", None),
    ],
)
def test_extract_choice(text: str, letter: str | None) -> None:
    assert extract_choice(text) == letter
    assert extract_answer("choice", text) == letter


def test_negative_answers_match() -> None:
    # The research regex "#### (\d+...)" could never match a negative answer.
    assert exact_match_scores("gsm8k", "#### -3", "so -3\n#### -3") == {
        "exact_match": 1.0,
        "exact_match_flexible": 1.0,
    }


def test_commas_and_dollars_are_ignored() -> None:
    scores = exact_match_scores("gsm8k", "She pays $1000. #### $1000", "#### 1,000")
    assert scores == {"exact_match": 1.0, "exact_match_flexible": 1.0}


def test_flexible_match_without_marker() -> None:
    scores = exact_match_scores("gsm8k", "48/2=24, 48+24 = 72.", "#### 72")
    assert scores == {"exact_match": 0.0, "exact_match_flexible": 1.0}


def test_strict_match_reads_the_first_marker_flexible_the_last_number() -> None:
    scores = exact_match_scores("gsm8k", "#### 72\nQuestion: two more? #### 2", "#### 72")
    assert scores == {"exact_match": 1.0, "exact_match_flexible": 0.0}


def test_gsm8k_is_exact() -> None:
    assert exact_match_scores("gsm8k", "#### 72.0001", "#### 72")["exact_match"] == 0.0
    assert exact_match_scores("gsm8k", "#### 72.00", "#### 72")["exact_match"] == 1.0


@pytest.mark.parametrize(
    ("prediction", "matches"),
    [("#### 0.25", True), ("#### 0.25001", True), ("#### 0.2501", False), ("#### 1/4", False)],
)
def test_mathqa_relative_tolerance(prediction: str, matches: bool) -> None:
    assert exact_match_scores("mathqa", prediction, "#### 0.25")["exact_match"] == float(matches)


def test_mathqa_integer_answer_given_as_float() -> None:
    assert exact_match_scores("mathqa", "#### 625", "#### 625.0")["exact_match"] == 1.0


def test_choice() -> None:
    assert exact_match_scores("choice", "D. plants", "D") == {"exact_match": 1.0}
    assert exact_match_scores("choice", "B", " d ") == {"exact_match": 0.0}
    assert exact_match_scores("choice", "", "D") == {"exact_match": 0.0}


def test_reference_without_answer_is_an_error() -> None:
    with pytest.raises(ValueError, match="no '#### <number>' answer"):
        reference_answer("gsm8k", "48/2=24, so 72")
    with pytest.raises(ValueError, match="no answer letter"):
        reference_answer("choice", "5")


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown answer format 'gsm9k'"):
        extract_answer("gsm9k", "#### 1")


def test_text_format_compares_whole_answers_after_collapsing_white_space() -> None:
    from seglm.metrics.exact_match import exact_match_scores

    assert exact_match_scores("text", "  Paris,\n France ", "Paris, France") == {"exact_match": 1.0}
    assert exact_match_scores("text", "Paris", "Paris, France") == {"exact_match": 0.0}
    with pytest.raises(ValueError, match="empty"):
        exact_match_scores("text", "Paris", "   ")
