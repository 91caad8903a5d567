"""The hub code path, pointed at local folders (no network), and the JSON array reader."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pytest

from seglm.tasks import DataError, LoadReport, get_task, gsm8k, hellaswag, openbookqa
from seglm.tasks.sources import read_json_array

from .conftest import write_lines


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))


def local_hub(monkeypatch: pytest.MonkeyPatch, module: Any, folder: Path) -> None:
    """Point a task's hub id at a local folder that ``datasets.load_dataset`` reads."""
    source = dataclasses.replace(module.SOURCE, hub_id=str(folder), hub_config=None)
    monkeypatch.setattr(module, "SOURCE", source)


def test_gsm8k_from_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"question": f"q{i}", "answer": f"<<{i}+1={i + 1}>>\n#### {i + 1}"} for i in range(20)]
    write_lines(tmp_path / "hub" / "train.jsonl", rows)
    write_lines(tmp_path / "hub" / "test.jsonl", rows[:3])
    local_hub(monkeypatch, gsm8k, tmp_path / "hub")
    loaded = get_task("gsm8k").load_with_report("test")
    assert loaded.report.source == f"hub:{tmp_path / 'hub'} split test"
    assert [e.target for e in loaded.examples] == [
        "<<0+1=1>> #### 1",
        "<<1+1=2>> #### 2",
        "<<2+1=3>> #### 3",
    ]
    assert len(get_task("gsm8k").load("validation")) == 2  # 10% of 20, rounded up


def test_openbookqa_hub_rows_are_read_like_the_published_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = {
        "id": "7-980",
        "question_stem": "The sun is responsible for",
        "choices": {
            "text": ["puppies", "children", "flowers", "plants"],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "D",
        "fact1": "the sun is the source of energy",
    }
    write_lines(tmp_path / "hub" / "test.jsonl", [row])
    source = dataclasses.replace(
        openbookqa.ADDITIONAL, hub_id=str(tmp_path / "hub"), hub_config=None
    )
    monkeypatch.setattr(openbookqa, "ADDITIONAL", source)
    example = get_task("openbookqa").load("test")[0]
    assert example.prompt == (
        "Question: The sun is responsible for\nA. puppies\nB. children\nC. flowers\nD. plants\n"
        "Context: the sun is the source of energy\nAnswer: "
    )
    assert (example.id, example.target, example.label) == ("openbookqa/test/7-980", "D", 3)


def test_hellaswag_hub_labels_are_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"ind": 4, "activity_label": "x", "ctx_a": "a", "ctx_b": "b", "ctx": "a b",
           "endings": ["e0", "e1", "e2", "e3"], "label": "2"}  # fmt: skip
    write_lines(tmp_path / "hub" / "validation.jsonl", [row, {**row, "label": ""}])
    local_hub(monkeypatch, hellaswag, tmp_path / "hub")
    with pytest.raises(
        DataError, match=r"split validation row 1: field 'label': expected an index"
    ):
        get_task("hellaswag").load("test")
    assert get_task("hellaswag").load("test", limit=1)[0].target == "C"


def test_json_array_records_name_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"a": 1}, {"b": [1, 2]}, 3], indent=4), encoding="utf-8")
    records = list(read_json_array(path, "s"))
    assert [r.where for r in records] == [f"{path}:2", f"{path}:5", f"{path}:11"]
    assert records[1].fields() == {"b": [1, 2]}
    with pytest.raises(DataError, match="expected a JSON object, got int"):
        records[2].fields()
    path.write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON array"):
        list(read_json_array(path, "s"))


def test_report_counts_and_serialises() -> None:
    report = LoadReport(task="t", split="s")
    report.skip(DataError("f:1", "x", "missing", "missing field"))
    report.skip(DataError("f:2", None, "bad", "malformed JSON"))
    assert report.to_dict()["skipped"] == {"missing field": 1, "malformed JSON": 1}
    assert report.errors == ["f:1: field 'x': missing", "f:2: bad"]


def test_the_published_files_raise_no_row_count_warning(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="seglm.tasks.sources"):
        for task, split in (("gsm8k", "validation"), ("gsm8k", "test"), ("mathqa", "test"),
                            ("openbookqa", "validation"), ("hellaswag", "test")):  # fmt: skip
            get_task(task).load(split, data_dir=str(shared_data))
        get_task("openbookqa", context=False).load("test", data_dir=str(shared_data))
    assert not [r.getMessage() for r in caplog.records if r.name == "seglm.tasks.sources"]
