import json
from pathlib import Path

import pytest

from seglm.metrics import (
    METRICS_BY_FORMAT,
    PredictionsFileError,
    aggregate,
    count_scored,
    score_file,
    score_prediction,
)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _record(prediction: str, reference: str) -> str:
    return json.dumps({"prediction": prediction, "reference": reference})


@pytest.mark.parametrize("answer_format", ["gsm8k", "mathqa", "choice"])
def test_keys_follow_the_format(answer_format: str) -> None:
    reference = "D" if answer_format == "choice" else "<<add(n0,n1)>> #### 3"
    scores = score_prediction(answer_format, "D #### 3", reference)
    assert tuple(scores) == METRICS_BY_FORMAT[answer_format]


def test_score_prediction_gsm8k() -> None:
    scores = score_prediction("gsm8k", "<<5-3=2>> <<2*4=8>> #### 8", "<<5-3=2>> <<2+4=6>> #### 6")
    assert scores["exact_match"] == 0.0
    assert scores["iou"] == pytest.approx(1 / 3)
    assert scores["wrong_operators"] == 1.0


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown answer format"):
        score_prediction("latex", "x", "y")


def test_aggregate_ignores_none() -> None:
    per_example = [
        {"exact_match": 1.0, "iou": None, "recall": None},
        {"exact_match": 0.0, "iou": 0.5, "recall": None},
        {"exact_match": 0.0, "iou": 0.25, "recall": None},
    ]
    assert aggregate(per_example) == pytest.approx({"exact_match": 1 / 3, "iou": 0.375})
    assert count_scored(per_example) == {"exact_match": 3, "iou": 2, "recall": 0}
    assert aggregate([]) == {}


def test_score_file(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "p.jsonl",
        [_record("#### 72", "<<48+24=72>> #### 72"), "", _record("#### 1", "#### 2")],
    )
    scored = score_file("gsm8k", path)
    assert [example.line for example in scored] == [1, 3]
    assert [example.scores["exact_match"] for example in scored] == [1.0, 0.0]
    assert scored[0].scores["recall"] == 0.0
    assert scored[1].scores["recall"] is None


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        ('{"prediction": "#### 1", "reference": ', r"line 2: not valid JSON"),
        ('["#### 1", "#### 1"]', r"line 2: expected a JSON object, got list"),
        ('{"reference": "#### 1"}', r"line 2: missing field 'prediction'"),
        ('{"prediction": "#### 1"}', r"line 2: missing field 'reference'"),
        ('{"prediction": "1", "reference": 1}', r"line 2: field 'reference' must be a string"),
        (_record("#### 1", "the answer is 1"), r"line 2: reference has no '#### <number>'"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, second_line: str, message: str) -> None:
    path = _write_lines(tmp_path / "p.jsonl", [_record("#### 1", "#### 1"), second_line])
    with pytest.raises(PredictionsFileError, match=message):
        score_file("gsm8k", path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PredictionsFileError, match="holds no predictions"):
        score_file("gsm8k", path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prediction": "\xe9", "reference": "#### 1"}\n')
    with pytest.raises(PredictionsFileError, match="not UTF-8"):
        score_file("gsm8k", path)
