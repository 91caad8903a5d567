"""The one JSON Lines reader: training logs, predictions files (seglm's and the user's), ROSCOE
scores. Standard library only, so every layer may use it (metrics included).

A line that is not a JSON object, or not UTF-8 text, is an error naming the file and line. A
file that seglm appends to while it works (the predictions file) may end in a line that a crash
cut short: ``repair=True`` drops that line from the file, with a warning, instead of failing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class JsonlError(ValueError):
    """A JSON Lines file with a line that is not a JSON object: names the file and line."""


def iter_jsonl(
    path: Path, *, error: type[ValueError] = JsonlError, repair: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each object of a JSON Lines file with its line number (blank lines skipped); a bad line
    raises ``error`` naming it. ``repair``: a last line without its newline that does not read
    (a write cut short) is cut from the file and ends the records, and a last record without
    its newline gets one, so that appending to the file starts a new line."""
    with path.open("rb") as lines:  # decoded line by line, so that an error names its line
        offset, raw = 0, b""
        for number, raw in enumerate(lines, start=1):
            start, offset = offset, offset + len(raw)
            where = f"{path}, line {number}"
            try:
                record = _read_line(raw, where, error)
            except _Unreadable as problem:
                if not repair or raw.endswith(b"\n"):
                    raise error(str(problem)) from None
                logger.warning("%s: dropped a line torn by an interrupted write", where)
                with path.open("r+b") as handle:
                    handle.truncate(start)
                return
            if record is not None:
                yield number, record
    if repair and raw and not raw.endswith(b"\n"):
        with path.open("ab") as handle:
            handle.write(b"\n")


class _Unreadable(ValueError):
    """A line that is not UTF-8 JSON: what a write cut short leaves."""


def _read_line(raw: bytes, where: str, error: type[ValueError]) -> dict[str, Any] | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as problem:
        raise _Unreadable(f"{where}: not UTF-8 text ({problem})") from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError as problem:
        raise _Unreadable(f"{where}: not valid JSON ({problem})") from None
    if not isinstance(record, dict):
        raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def read_jsonl(path: Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file (see :func:`iter_jsonl`); ``missing_ok``: none for a
    file that does not exist."""
    if missing_ok and not path.is_file():
        return []
    return [record for _, record in iter_jsonl(path)]


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """The objects of the lines that read whole (each a JSON object ending in a newline); the
    others, torn by an interrupted write or damaged, are left out with a warning."""
    records = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                record = _read_line(raw, f"{path}, line {number}", JsonlError)
            except ValueError:
                record = None
            if record is None or not raw.endswith(b"\n"):
                if raw.strip():
                    logger.warning("%s, line %d: left out, not a whole JSON object", path, number)
                continue
            records.append(record)
    return records


def first_damage(path: Path) -> str | None:
    """Where a JSON Lines file that seglm wrote whole is not: its first line that is not a JSON
    object ending in a newline (``line 40 is cut short``), or None."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.endswith(b"\n"):
                return f"line {number} is cut short (no newline)"
            try:
                _read_line(raw, f"line {number}", JsonlError)
            except ValueError as problem:
                return str(problem)
    return None
