from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from seglm.tasks import DataError, get_task

from .conftest import write_lines

ROOF = {
    "ind": 0,
    "activity_label": "Roof shingle removal",
    "ctx": "A man is sitting on a roof. he",
    "label": 3,
    "endings": [
        "is using wrap to wrap a pair of skis.",
        "is ripping level tiles off.",
        "is holding a rubik's cube.",
        "starts pulling up roofing on a roof.",
    ],
}


def test_test_is_the_published_validation_set(shared_data: Path) -> None:
    test = get_task("hellaswag").load("test", data_dir=str(shared_data))
    assert len(test) == 10042
    assert Counter(e.label for e in test) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}


def rows(count: int) -> list[dict]:
    return [
        {**ROOF, "ind": i, "ctx": f"Context number {i}. he", "label": i % 4} for i in range(count)
    ]


def test_validation_is_held_out_of_train_never_the_test_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The paper selected checkpoints on the set it reported as test (docs/method.md,
    # "Known defects", item 7); here the validation split is 2.5% of the official train set,
    # held out of train.
    write_lines(tmp_path / "hellaswag" / "hellaswag_train.jsonl", rows(200))
    with pytest.raises(ValueError, match=r"holds 200 records, but the published file holds 39905"):
        get_task("hellaswag").load("validation", data_dir=str(tmp_path))
    monkeypatch.setenv("SEGLM_ALLOW_ROW_COUNT_MISMATCH", "1")  # a small train file on purpose
    write_lines(tmp_path / "hellaswag" / "hellaswag_val.jsonl", [ROOF, ROOF])
    task = get_task("hellaswag")

    def contexts(split: str) -> list[str]:
        return [e.source for e in task.load(split, data_dir=str(tmp_path))]

    train, validation, official = (
        contexts("train"),
        contexts("validation"),
        contexts("official_train"),
    )
    assert (len(train), len(validation), len(official)) == (195, 5, 200)
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(official)
    assert contexts("test") == [ROOF["ctx"]] * 2
    assert "held out" in task.describe_split("validation")
    assert "official validation" in task.describe_split("test")


def test_paper_prompt(shared_data: Path) -> None:
    example = get_task("hellaswag").load("test", data_dir=str(shared_data), limit=1)[0]
    assert example.prompt == (
        "Question: A man is sitting on a roof. he\nA. is using wrap to wrap a pair of skis.\n"
        "B. is ripping level tiles off.\nC. is holding a rubik's cube.\n"
        "D. starts pulling up roofing on a roof.\nAnswer: "
    )
    assert (example.target, example.reference, example.label) == ("D", "D", 3)
    assert example.metadata == {"activity_label": "Roof shingle removal", "ind": 0}


def test_train_is_missing_offline_with_the_hub_alternative(shared_data: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        get_task("hellaswag").load("train", data_dir=str(shared_data))
    assert "hellaswag/hellaswag_train.jsonl is missing" in str(error.value)
    assert "Rowan/hellaswag split train" in str(error.value)


def test_original_file_name_is_preferred_to_the_stand_in(tmp_path: Path) -> None:
    write_lines(tmp_path / "hellaswag" / "validation.jsonl", [ROOF])
    write_lines(tmp_path / "hellaswag" / "hellaswag_val.jsonl", [ROOF, ROOF])
    loaded = get_task("hellaswag").load_with_report("test", data_dir=str(tmp_path))
    assert len(loaded.examples) == 2
    assert loaded.report.source.endswith("hellaswag_val.jsonl")


def test_loglik_query_is_lm_evals(tmp_path: Path) -> None:
    # lm-evaluation-harness: "activity_label: ctx", " [title]" -> ". ", other [tags] dropped.
    record = {
        **ROOF,
        "ctx": "A man [step] is on a roof [title] he",
        "endings": ["a [x]b", "c"],
        "label": 1,
    }
    write_lines(tmp_path / "hellaswag" / "hellaswag_val.jsonl", [record])
    task = get_task("hellaswag")
    (example,) = task.load("test", data_dir=str(tmp_path))
    context, choices = task.loglik_query(example)
    assert context == "Roof shingle removal: A man is on a roof. he"
    assert choices == ["a b", "c"]
    plain = get_task("openbookqa")
    assert plain.loglik_query(example) == (example.source, list(example.choices))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"label": 4}, "field 'label': index 4 outside 0-3"),
        ({"label": ""}, "field 'label': expected an index 0-3, got ''"),
        ({"endings": ["only one"]}, "field 'endings': expected a list of at least 2"),
        ({"ctx": ""}, "field 'ctx': empty"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, change: dict, expected: str) -> None:
    path = write_lines(tmp_path / "hellaswag" / "validation.jsonl", [ROOF, {**ROOF, **change}])
    with pytest.raises(DataError) as error:
        get_task("hellaswag").load("test", data_dir=str(tmp_path))
    assert str(error.value).startswith(f"{path}:2: {expected}")
