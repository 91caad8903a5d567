from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from seglm.tasks import DataError, get_task

from .conftest import write_lines

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
    "<<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def test_splits_match_the_published_sizes_and_the_paper_split(shared_data: Path) -> None:
    task = get_task("gsm8k")
    train, validation, official, test = (
        task.load(split, data_dir=str(shared_data))
        for split in ("train", "validation", "official_train", "test")
    )
    assert (len(train), len(validation), len(official), len(test)) == (6725, 748, 7473, 1319)
    train_ids, validation_ids = {e.id for e in train}, {e.id for e in validation}
    assert not train_ids & validation_ids
    assert train_ids | validation_ids == {e.id for e in official}
    # datasets' train_test_split(test_size=0.1, seed=42), as the research code split it.
    assert [e.id for e in validation[:3]] == [
        "gsm8k/train/3082",
        "gsm8k/train/2184",
        "gsm8k/train/5897",
    ]


def test_a_train_file_cut_at_a_line_boundary_is_refused_for_the_split_drawn_from_it(
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every line parses: only the count shows that the file is not the published one.
    published = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines(keepends=True)
    cut = tmp_path / "gsm8k" / "train.jsonl"
    cut.parent.mkdir()
    cut.write_text("".join(published[:1000]))
    task = get_task("gsm8k")
    for split in ("validation", "train"):
        with pytest.raises(ValueError) as error:
            task.load(split, data_dir=str(tmp_path))
        assert str(error.value) == (
            f"{cut} holds 1000 records, but the published file holds 7473: it is cut short or "
            "not the published file, and the split held out of it would silently change (100 "
            "held-out examples instead of 748, and another train split). Restore the published "
            "file, or set SEGLM_ALLOW_ROW_COUNT_MISMATCH=1 to split this one anyway"
        )
    # The whole file as it is: a warning only.
    with caplog.at_level(logging.WARNING, logger="seglm.tasks.sources"):
        assert len(task.load("official_train", data_dir=str(tmp_path))) == 1000
    assert f"{cut} holds 1000 records, but the published file holds 7473" in caplog.text
    assert "not comparable with published ones" in caplog.text
    caplog.clear()
    monkeypatch.setenv("SEGLM_ALLOW_ROW_COUNT_MISMATCH", "1")
    with caplog.at_level(logging.WARNING, logger="seglm.tasks.sources"):
        assert len(task.load("validation", data_dir=str(tmp_path))) == 100
    assert "splitting it anyway (SEGLM_ALLOW_ROW_COUNT_MISMATCH=1)" in caplog.text


def test_paper_target_is_annotations_and_final_line(shared_data: Path) -> None:
    example = get_task("gsm8k").load("official_train", data_dir=str(shared_data), limit=1)[0]
    assert example.id == "gsm8k/train/0"
    assert example.prompt == f"Question: {NATALIA['question']}\nAnswer: "
    assert example.target == "<<48/2=24>> <<48+24=72>> #### 72"
    assert example.reference == NATALIA["answer"]
    assert example.source == NATALIA["question"]
    assert example.metadata == {"answer": "72"}
    assert example.choices is None and example.label is None


def test_full_target_is_the_published_solution(tmp_path: Path) -> None:
    write_lines(tmp_path / "gsm8k" / "test.jsonl", [NATALIA])
    example = get_task("gsm8k", target="full").load("test", data_dir=str(tmp_path))[0]
    assert example.target == example.reference == NATALIA["answer"]


def test_chat_prompt_puts_the_plain_prompt_in_the_user_turn(tmp_path: Path, tokenizer: Any) -> None:
    write_lines(tmp_path / "gsm8k" / "test.jsonl", [NATALIA])
    task = get_task("gsm8k", prompt_style="chat", tokenizer=tokenizer)
    prompt = task.load("test", data_dir=str(tmp_path))[0].prompt
    assert prompt.startswith("<|im_start|>system\n")
    assert f"<|im_start|>user\nQuestion: {NATALIA['question']}\nAnswer:<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert task.default_max_length == get_task("gsm8k").default_max_length + 64


def test_chat_prompt_needs_a_tokenizer() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        get_task("gsm8k", prompt_style="chat")


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"target='[a-z]*' is not one of 'paper', 'full'"):
        get_task("gsm8k", target="short")
    with pytest.raises(ValueError, match="no split 'dev'"):
        get_task("gsm8k").load("dev")


def test_missing_file_names_the_path_and_the_hub_alternative(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        get_task("gsm8k").load("test", data_dir=str(tmp_path))
    assert str(tmp_path / "gsm8k" / "test.jsonl") in str(error.value)
    assert "openai/gsm8k (config main) split test" in str(error.value)


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"question": "q"}', "field 'answer': missing"),
        ('{"question": "q", "answer": 7}', "field 'answer': expected a str"),
        ('{"question": "q", "answer": "no final line"}', "field 'answer': no final line"),
        ('{"question": "q", "answer": "#### 1"', "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = write_lines(tmp_path / "gsm8k" / "test.jsonl", [NATALIA, "", bad_line])
    with pytest.raises(DataError) as error:
        get_task("gsm8k").load("test", data_dir=str(tmp_path))
    assert str(error.value).startswith(f"{path}:3: ")
    assert expected in str(error.value)


def test_skip_policy_counts_bad_records_by_reason(tmp_path: Path) -> None:
    lines = [NATALIA, '{"question": "q"}', "{oops", NATALIA, '{"answer": "#### 1"}']
    path = write_lines(tmp_path / "gsm8k" / "test.jsonl", lines)
    loaded = get_task("gsm8k", on_error="skip").load_with_report("test", data_dir=str(tmp_path))
    assert [e.id for e in loaded.examples] == ["gsm8k/test/0", "gsm8k/test/3"]
    report = loaded.report
    assert (report.records, report.examples) == (5, 2)
    assert report.skipped == {"missing field": 2, "malformed JSON": 1}
    assert (
        report.errors[0]
        == f"{path}:2: field 'answer': missing; expected a str (the solution ending in '#### N')"
    )
    assert report.source == str(path)


def test_data_dir_comes_from_the_argument_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_lines(tmp_path / "env" / "gsm8k" / "test.jsonl", [NATALIA])
    write_lines(tmp_path / "arg" / "gsm8k" / "test.jsonl", [NATALIA, NATALIA])
    monkeypatch.setenv("SEGLM_DATA_DIR", str(tmp_path / "env"))
    assert len(get_task("gsm8k").load("test")) == 1
    assert len(get_task("gsm8k").load("test", data_dir=str(tmp_path / "arg"))) == 2
    monkeypatch.setenv("SEGLM_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(
        FileNotFoundError, match=r"nowhere \(from \$SEGLM_DATA_DIR\) is not a folder"
    ):
        get_task("gsm8k").load("test")
