from __future__ import annotations

from pathlib import Path

import pytest

from seglm.tasks import DataError, get_task

from .conftest import write_lines

QUESTION = {
    "stem": "The sun is responsible for",
    "choices": [
        {"text": "puppies learning new tricks", "label": "A"},
        {"text": "children growing up and getting old", "label": "B"},
        {"text": "flowers wilting in a vase", "label": "C"},
        {"text": "plants sprouting, blooming and wilting", "label": "D"},
    ],
}
FACT = "the sun is the source of energy for physical cycles on Earth"
RECORD = {"id": "7-980", "question": QUESTION, "fact1": FACT, "answerKey": "D"}
PROMPT = (
    "Question: The sun is responsible for\nA. puppies learning new tricks\n"
    "B. children growing up and getting old\nC. flowers wilting in a vase\n"
    "D. plants sprouting, blooming and wilting\nContext: " + FACT + "\nAnswer: "
)


@pytest.mark.parametrize("context", [True, False])
def test_splits_match_the_published_sizes(shared_data: Path, context: bool) -> None:
    task = get_task("openbookqa", context=context)
    sizes = [len(task.load(split, data_dir=str(shared_data))) for split in task.splits]
    assert sizes == [4957, 500, 500]


def test_paper_prompt_with_context(shared_data: Path) -> None:
    example = get_task("openbookqa").load("train", data_dir=str(shared_data), limit=1)[0]
    assert example.id == "openbookqa/train/7-980"
    assert example.prompt == PROMPT
    assert (example.target, example.reference, example.label) == ("D", "D", 3)
    assert example.choices == tuple(choice["text"] for choice in QUESTION["choices"])
    assert example.source == QUESTION["stem"]
    assert example.metadata == {"fact1": FACT}


def test_text_target_adds_the_answer_text_and_keeps_the_letter_as_reference(
    shared_data: Path,
) -> None:
    from seglm.metrics import score_prediction

    example = get_task("openbookqa", target="text").load("train", data_dir=str(shared_data))[0]
    answer = QUESTION["choices"][3]["text"]
    assert (example.target, example.reference) == (f"D. {answer}", "D")
    assert example.prompt == PROMPT
    # Generating the new target scores as the right letter; another letter with that text does not.
    assert score_prediction("choice", example.target, example.reference)["exact_match"] == 1.0
    assert score_prediction("choice", f"C. {answer}", example.reference)["exact_match"] == 0.0
    with pytest.raises(ValueError, match=r"target='word' is not one of 'letter', 'text'"):
        get_task("openbookqa", target="word")


def test_without_context_reads_main_and_drops_the_context_line(tmp_path: Path) -> None:
    main = {key: value for key, value in RECORD.items() if key != "fact1"}
    write_lines(tmp_path / "openbookqa" / "Main" / "dev.jsonl", [main])
    example = get_task("openbookqa", context=False).load("dev", data_dir=str(tmp_path))[0]
    assert example.prompt == PROMPT.replace(f"Context: {FACT}\n", "")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"answerKey": "E"},
            "field 'answerKey': unknown answer letter 'E'; expected one of A, B, C, D",
        ),
        ({"fact1": None}, "field 'fact1': missing"),
        ({"question": {"choices": QUESTION["choices"]}}, "field 'question.stem': missing"),
        (
            {"question": {**QUESTION, "choices": [{"text": "x"}, {"text": "y", "label": "B"}]}},
            "field 'question.choices[0].label': missing",
        ),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, change: dict, expected: str) -> None:
    path = tmp_path / "openbookqa" / "Additional" / "test_complete.jsonl"
    write_lines(path, [RECORD, {**RECORD, **change}])
    with pytest.raises(DataError) as error:
        get_task("openbookqa").load("test", data_dir=str(tmp_path))
    assert str(error.value).startswith(f"{path}:2: {expected}")
