"""seglm.runs: the JSON Lines reader every run-folder file goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from seglm.runs import JsonlError, iter_jsonl, read_jsonl


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
