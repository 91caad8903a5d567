from __future__ import annotations

from pathlib import Path

import pytest

from seglm.tasks import DataError, get_task

from .conftest import write_lines


def test_generative_records_with_renamed_fields(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "train.jsonl",
        [
            {"q": "2+2?", "a": "4", "ref": "four", "uid": "x1", "topic": "sums"},
            {"q": "3+3?", "a": "6", "ref": "six", "uid": "x2"},
        ],
    )
    task = get_task(
        "jsonl", prompt_field="q", target_field="a", reference_field="ref", id_field="uid"
    )
    examples = task.load("train", data_dir=str(tmp_path))
    assert task.answer_format == "text"
    first = examples[0]
    assert (first.id, first.prompt, first.target, first.reference) == (
        "jsonl/train/x1",
        "2+2?",
        "4",
        "four",
    )
    assert first.source == "2+2?"
    assert first.metadata == {"topic": "sums"}
    assert examples[1].metadata == {}


def test_reference_defaults_to_the_target_and_ids_to_the_position(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", [{"prompt": "p", "target": "t"}])
    task = get_task("jsonl", path=str(path))
    assert task.splits == ("data",)
    example = task.load("data")[0]
    assert (example.id, example.reference) == ("jsonl/data/0", "t")
    with pytest.raises(ValueError, match="holds only the split 'data'"):
        task.load("test")


def test_gsm8k_answer_format_checks_the_final_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "test.jsonl",
        [{"prompt": "p", "target": "<<1+1=2>> #### 2"}, {"prompt": "p", "target": "2"}],
    )
    task = get_task("jsonl", path=str(tmp_path), answer_format="gsm8k")
    with pytest.raises(DataError, match=rf"{path}:2: field 'target': no final line"):
        task.load("test")


@pytest.mark.parametrize("label", [1, "1", "B", "b"])
def test_multiple_choice_with_index_or_letter_labels(tmp_path: Path, label: object) -> None:
    write_lines(
        tmp_path / "test.jsonl", [{"prompt": "Sky?", "options": ["red", "blue"], "gold": label}]
    )
    task = get_task("jsonl", path=str(tmp_path), choices_field="options", label_field="gold")
    example = task.load("test")[0]
    assert task.answer_format == "choice"
    assert example.prompt == "Question: Sky?\nA. red\nB. blue\nAnswer: "
    assert (example.target, example.reference, example.label, example.choices) == (
        "B",
        "B",
        1,
        ("red", "blue"),
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"prompt": "p", "choices": ["a", "b"], "label": "C"}',
            "field 'label': unknown answer letter 'C'; expected one of A, B",
        ),
        (
            '{"prompt": "p", "choices": ["a", "b"], "label": 2}',
            "field 'label': index 2 outside 0-1",
        ),
        ('{"prompt": "p", "choices": ["a", "b"]}', "field 'label': missing"),
        ('{"prompt": "p", "choices": "a, b", "label": 0}', "field 'choices': expected a list"),
        ('{"choices": ["a", "b"], "label": 0}', "field 'prompt': missing"),
        ('{"prompt": "p", "choices": ["a", "b"], "label": 0', "malformed JSON"),
        # Exact match reads the letters A-H only: a ninth choice could never be scored right.
        (
            '{"prompt": "p", "choices": ["1", "2", "3", "4", "5", "6", "7", "8", "9"], "label": 8}',
            "field 'choices': more than 8 choices",
        ),
    ],
)
def test_bad_choice_records_name_file_line_and_field(
    tmp_path: Path, line: str, expected: str
) -> None:
    good = {"prompt": "p", "choices": ["a", "b"], "label": 0}
    path = write_lines(tmp_path / "test.jsonl", [good, line])
    task = get_task("jsonl", path=str(tmp_path), choices_field="choices")
    with pytest.raises(DataError) as error:
        task.load("test")
    assert str(error.value).startswith(f"{path}:2: {expected}")
    skipping = get_task("jsonl", path=str(tmp_path), choices_field="choices", on_error="skip")
    loaded = skipping.load_with_report("test")
    assert len(loaded.examples) == 1 and loaded.report.skipped_total == 1


def test_missing_split_and_missing_location_are_explained(tmp_path: Path) -> None:
    write_lines(tmp_path / "train.jsonl", [{"prompt": "p", "target": "t"}])
    with pytest.raises(
        FileNotFoundError, match=r"test.jsonl is missing \(splits found in .*: train\)"
    ):
        get_task("jsonl").load("test", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="jsonl needs the option path"):
        get_task("jsonl").load("train")


def test_answer_format_must_fit_the_data_shape() -> None:
    with pytest.raises(ValueError, match="answer_format"):
        get_task("jsonl", answer_format="mathqa")
    with pytest.raises(ValueError, match="choices_field has answer_format 'choice'"):
        get_task("jsonl", choices_field="c", answer_format="text")
