"""seglm.json_lines: the JSON Lines reader every file of JSON lines goes through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seglm.json_lines import JsonlError, iter_jsonl, read_jsonl


def test_objects_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n\n  \n{"step": 2, "text": "é"}\n', encoding="utf-8")
    assert list(iter_jsonl(path)) == [(1, {"step": 1}), (4, {"step": 2, "text": "é"})]
    assert read_jsonl(path) == [{"step": 1}, {"step": 2, "text": "é"}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": \n', r"log\.jsonl, line 2: not valid JSON"),
        (b'{"a": 1}\n\n[1, 2]\n', r"log\.jsonl, line 3: expected a JSON object, got list"),
        (b'{"a": 1}\n{"a": "\xff"}\n', r"log\.jsonl, line 2: not UTF-8 text"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(content)
    with pytest.raises(JsonlError, match=message):
        read_jsonl(path)


def test_a_missing_file_is_empty_only_when_allowed(tmp_path: Path) -> None:
    assert read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "none.jsonl")


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        (b'{"a": 1}\n{"a": 2}\n{"a": 3, "tex', b'{"a": 1}\n{"a": 2}\n'),  # cut inside a record
        (b'{"a": 1}\n{"a": "\xc3', b'{"a": 1}\n'),  # cut inside a UTF-8 character
        (b'{"a": 1}\n{"a": 2}', b'{"a": 1}\n{"a": 2}\n'),  # cut before the newline only
    ],
)
def test_repair_cuts_a_torn_last_line_from_the_file(
    tmp_path: Path, content: bytes, kept: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(content)
    records = [record for _, record in iter_jsonl(path, repair=True)]
    assert records == [json.loads(line) for line in kept.splitlines()]
    assert path.read_bytes() == kept  # appending now starts a new line
    torn = kept != content + b"\n"
    assert ("torn by an interrupted write" in caplog.text) == torn


def test_repair_leaves_a_bad_line_that_ends_in_a_newline_an_error(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    content = b'{"a": 1}\n{"a": \n{"a": 3}\n'
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        list(iter_jsonl(path, error=ValueError, repair=True))
    path.write_bytes(b'{"a": 1}\n[1, 2]')  # whole JSON, not an object: no write cut it short
    with pytest.raises(JsonlError, match=r"line 2: expected a JSON object, got list"):
        list(iter_jsonl(path, repair=True))
    assert path.read_bytes() == b'{"a": 1}\n[1, 2]'
