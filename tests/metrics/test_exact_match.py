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
        ("1,2,3", None),  # not thousands separators: unreadable, not the list 1, 2, 3
        ("1, 2, 3", 3.0),
        ("#### - 10", -10.0),  # a detached minus after no operand is a sign
        ("16 - 3", 3.0),  # after an operand it subtracts
        ("(2+3)-3", 3.0),
        ("3/4 of them", None),  # a fraction is not a number answer
        ("2 / 3", None),
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


@pytest.mark.parametrize(
    "answer",
    ["72", "- 10", "-10", "$-5", "-$5", "$ 1,000.50", "1,8", "1,234,56", "3/4", "2 / 3", "72.",
     ".5", "1,000,000", "0", "-0", "72 apples", "seventy"],
)  # fmt: skip
def test_strict_and_flexible_read_a_lone_answer_alike(answer: str) -> None:
    # "#### - 10" read -10 strictly but 10 flexibly; "#### 1,8" read 1 and 8.
    text = f"#### {answer}"
    assert extract_answer("gsm8k", text) == extract_last_number(text)


# prediction, gold answer; then 1/0 for lm-eval strict-match, lm-eval flexible-extract,
# seglm exact_match, seglm exact_match_flexible, each derived by hand from lm-eval's gsm8k.yaml
# (strict "#### (\\-?[0-9\\.\\,]+)" first match, flexible "(-?[$0-9.,]{2,})|(-?[0-9]+)" last
# match, "[invalid]" without one; then ",", "$", "(?s).*#### " and a final "." removed from both
# sides, lower case, string equality) and from docs/metrics.md.
LM_EVAL_CASES = [
    ("#### 72", "72", 1, 1, 1, 1),
    ("#### 72.", "72", 1, 1, 1, 1),
    ("#### 72.0", "72", 0, 0, 1, 1),  # strings: "72.0" is not "72"
    ("#### $72", "72", 0, 1, 1, 1),  # strict needs a digit right after "#### "
    ("#### 1,000", "1000", 1, 1, 1, 1),
    ("#### 1,8", "18", 1, 1, 0, 0),  # lm-eval drops every comma; seglm: not a number
    ("#### - 10", "-10", 0, 0, 1, 1),  # lm-eval: no strict match, flexible reads "10"
    ("#### -10", "-10", 1, 1, 1, 1),
    ("The answer is 72", "72", 0, 1, 0, 1),
    ("48/2 = 24 and 48 + 24 = 72 clips", "72", 0, 1, 0, 1),
    ("#### 72\nQuestion: what about 5 more? #### 77", "72", 1, 1, 1, 0),  # lm-eval stops
    ("#### 72 apples", "72", 1, 1, 1, 1),
    ("#### 7.2", "72", 0, 0, 0, 0),
    ("#### 72,000", "72000", 1, 1, 1, 1),
    ("#### 72, since 8*9=72", "72", 1, 1, 1, 1),  # strict captures "72," and drops the comma
    ("#### 0.5", "0.5", 1, 1, 1, 1),
    ("#### .5", "0.5", 0, 0, 1, 1),
    ("#### 72.00", "72", 0, 0, 1, 1),
    ("#### 5%", "5", 1, 1, 1, 1),
    ("####72", "72", 0, 1, 1, 1),  # lm-eval's strict regex needs the space
    ("#### 3/4", "4", 0, 1, 0, 0),  # lm-eval: strict "3", flexible "4"; seglm: a fraction
    ("I think 72.\n\nSo the answer is 72.", "72", 0, 1, 0, 1),
    ("#### 1,000,000", "1000000", 1, 1, 1, 1),
    ("#### 1.000", "1000", 0, 0, 0, 0),
    ("The total is $1,234.50", "1234.5", 0, 0, 0, 1),  # "1234.50" is not "1234.5"
    ("#### -5", "5", 0, 0, 0, 0),
    ("#### 72\n#### 73", "72", 1, 0, 1, 0),
    ("#### 72 </s> extra 99", "72", 1, 1, 1, 0),
    ("#### 72<|im_end|>\nassistant 5", "72", 1, 1, 1, 0),
    ("Answer: 72 dollars.", "72", 0, 1, 0, 1),
    ("5 + 3 = 8. #### 8", "8", 1, 1, 1, 1),
    ("#### 72 - 10 = 62", "62", 0, 1, 0, 1),
    ("#### 16 - 3 - 4 = 9", "9", 0, 1, 0, 1),
    ("#### 72..", "72", 0, 0, 1, 1),  # only one final period is ignored by lm-eval
    ("#### 10 and -3", "-3", 0, 1, 0, 1),
    ("x = 4-3 = 1", "1", 0, 1, 0, 1),
    ("It costs $5.00.", "5", 0, 0, 0, 1),
    ("#### 72\n\nQuestion: next", "72", 1, 1, 1, 1),
    ("", "72", 0, 0, 0, 0),
    ("#### 007", "7", 0, 0, 1, 1),
    ("#### 1e3", "1000", 0, 0, 0, 0),
    ("#### 72 (seventy-two)", "72", 1, 1, 1, 1),
    ("#### -0", "0", 0, 0, 1, 1),
    ("#### 72 \n", "72", 1, 1, 1, 1),
    ("#### 1,2,3", "123", 1, 1, 0, 0),
    ("The answer is x2", "2", 0, 1, 0, 0),  # seglm does not read a number inside a word
    ("so 16-3", "3", 0, 0, 0, 1),  # lm-eval's last match is "-3"
    ("Total: 5 ... and so on...", "5", 0, 0, 0, 1),  # lm-eval's last match is "..."
]


@pytest.mark.parametrize(
    ("prediction", "gold", "lm_strict", "lm_flexible", "strict", "flexible"), LM_EVAL_CASES
)
def test_lm_eval_mode_reproduces_lm_evaluation_harness_gsm8k(
    prediction: str, gold: str, lm_strict: int, lm_flexible: int, strict: int, flexible: int
) -> None:
    reference = f"Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### {gold}"
    assert exact_match_scores("gsm8k", prediction, reference, "lm-eval") == {
        "exact_match": lm_strict,
        "exact_match_flexible": lm_flexible,
    }
    assert exact_match_scores("gsm8k", prediction, reference) == {
        "exact_match": strict,
        "exact_match_flexible": flexible,
    }


def test_lm_eval_mode_is_for_the_gsm8k_format_only() -> None:
    with pytest.raises(ValueError, match="gsm8k answer format only; got format 'choice'"):
        exact_match_scores("choice", "A", "A", "lm-eval")
    with pytest.raises(ValueError, match="unknown answer match 'lm_eval'"):
        exact_match_scores("gsm8k", "#### 1", "#### 1", "lm_eval")
