from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from seglm.tasks import DataError, get_task
from seglm.tasks.mathqa import option_number, parse_options

RECORD = {
    "Problem": "a multiple choice test consists of 4 questions , and each question has 5 answer "
    "choices . in how many r ways can the test be completed if every question is unanswered ?",
    "Rationale": '"5 choices for each of the 4 questions , thus total r of 5 * 5 * 5 * 5 = 5 ^ 4 '
    '= 625 ways to answer all of them . answer : c ."',
    "options": "a ) 24 , b ) 120 , c ) 625 , d ) 720 , e ) 1024",
    "correct": "c",
    "annotated_formula": "power(5, 4)",
    "linear_formula": "power(n1,n0)|",
    "category": "general",
}


def write_mathqa(folder: Path, records: list[Any], name: str = "test.json") -> Path:
    path = folder / "mathqa" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=4), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("split", "published", "kept"),
    [("validation", 4475, 3905), ("test", 2985, 2655), ("challenge_test", 604, 507)],
)
def test_splits_match_the_published_sizes(
    shared_data: Path, split: str, published: int, kept: int
) -> None:
    loaded = get_task("mathqa").load_with_report(split, data_dir=str(shared_data))
    assert loaded.report.records == published
    assert loaded.report.examples == len(loaded.examples) == kept
    assert loaded.report.skipped == {"answer not a number": published - kept}


def test_dev_is_an_alias_of_validation(shared_data: Path) -> None:
    examples = get_task("mathqa").load("dev", data_dir=str(shared_data), limit=2)
    # dev record 1's correct option is "31 / 36": skipped, and ids keep the published positions.
    assert [e.id for e in examples] == ["mathqa/validation/0", "mathqa/validation/2"]


def test_train_is_missing_offline_with_a_clear_message(shared_data: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"mathqa/train.json is missing; the hub has it"):
        get_task("mathqa").load("train", data_dir=str(shared_data))


def test_paper_and_full_targets(tmp_path: Path) -> None:
    write_mathqa(tmp_path, [RECORD])
    paper = get_task("mathqa").load("test", data_dir=str(tmp_path))[0]
    assert paper.prompt == f"Question: {RECORD['Problem']}\nAnswer: "
    assert paper.target == "<<power(n1,n0)>> #### 625.0"
    rationale = RECORD["Rationale"][1:-1]
    assert paper.reference == f"{rationale}\n<<power(n1,n0)>>\n#### 625.0"
    assert paper.metadata["options"] == ["24", "120", "625", "720", "1024"]
    full = get_task("mathqa", target="full").load("test", data_dir=str(tmp_path))[0]
    assert full.target == full.reference == paper.reference


def test_formula_without_trailing_bar_keeps_its_last_step(tmp_path: Path) -> None:
    record = dict(RECORD, linear_formula="divide(n0,n1)|multiply(#0,const_100)")
    write_mathqa(tmp_path, [record])
    example = get_task("mathqa").load("test", data_dir=str(tmp_path))[0]
    assert example.target == "<<divide(n0,n1)>> <<multiply(#0,const_100)>> #### 625.0"


def test_both_option_forms_parse() -> None:
    assert parse_options("a ) 1,200 , b ) rs . 5 , c ) 1 / 3 , d ) 7 , e ) none", "x") == {
        "a": "1,200",
        "b": "rs . 5",
        "c": "1 / 3",
        "d": "7",
        "e": "none",
    }
    listed = "['a ) 4', 'b ) 4 π', 'c ) 16', 'd ) 8 π', 'e ) 16']"
    assert parse_options(listed, "x") == {"a": "4", "b": "4 π", "c": "16", "d": "8 π", "e": "16"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("625", 625.0),
        ("rs . 8,000", 8000.0),
        ("$ 1,354", 1354.0),
        ("37.5 %", 37.5),
        ("- 5", -5.0),
        ("− 7", -7.0),
        ("12 km / hr", 12.0),
        (".5", 0.5),
        ("1 / 3", None),
        ("3 : 4", None),
        ("4 π", None),
        ("√ 3", None),
        ("1256 cm 2", None),
        ("none", None),
        ("four", None),
    ],
)
def test_option_number(text: str, value: float | None) -> None:
    assert option_number(text) == value


def test_non_numeric_answer_is_skipped_even_when_errors_raise(tmp_path: Path) -> None:
    path = write_mathqa(tmp_path, [RECORD, dict(RECORD, correct="b", options="a ) 1 , b ) 4 π")])
    loaded = get_task("mathqa").load_with_report("test", data_dir=str(tmp_path))
    assert len(loaded.examples) == 1
    assert loaded.report.skipped == {"answer not a number": 1}
    assert loaded.report.errors == [
        f"{path}:11: field 'options': correct option b ) '4 π' is not a number"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"correct": "f"}, "field 'correct': unknown answer letter 'f'; options are a, b, c, d, e"),
        ({"Problem": None}, "field 'Problem': missing"),
        ({"options": "24 or 120"}, "field 'options': expected options"),
        ({"options": "['a ) 4', 5]"}, "field 'options': a '[...]' options string"),
    ],
)
def test_bad_records_name_file_line_and_field(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    path = write_mathqa(tmp_path, [RECORD, {**RECORD, **change}])
    with pytest.raises(DataError) as error:
        get_task("mathqa").load("test", data_dir=str(tmp_path))
    assert str(error.value).startswith(f"{path}:11: ")
    assert expected in str(error.value)


def test_malformed_array_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "mathqa" / "test.json"
    path.parent.mkdir(parents=True)
    path.write_text('[\n    {"Problem": "p"},\n    {"Problem": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):
        get_task("mathqa", on_error="skip").load("test", data_dir=str(tmp_path))
