"""Where records come from: a folder of the published files, or the Hugging Face hub.

Resolution order: an explicit ``data_dir`` argument, then the ``SEGLM_DATA_DIR`` variable, then
the hub. A data dir holds one folder per dataset with the original file names
(``gsm8k/train.jsonl``, ``mathqa/dev.json``, ...); a file missing there is an error that says
where the hub has it, rather than a silent fall-back to the network.

A local file read to its end must hold the published number of records (``PUBLISHED_ROWS``):
a file cut short (at a line boundary it parses fine) or changed is a warning naming the counts,
and an error where a split is drawn from the file (a held-out validation split) and so would
silently change, unless ``SEGLM_ALLOW_ROW_COUNT_MISMATCH=1``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import DataDir, DataError, LoadReport, Record

logger = logging.getLogger(__name__)

DATA_DIR_VARIABLE = "SEGLM_DATA_DIR"
ALLOW_ROW_COUNT_MISMATCH_VARIABLE = "SEGLM_ALLOW_ROW_COUNT_MISMATCH"

# Records in each published file a data dir may hold, as the datasets published them (the
# GSM8K repository, the OpenBookQA release zip, MathQA.zip and the HF math_qa card, HellaSwag's
# repository; the copies' checks are in shared/data/README.md).
PUBLISHED_ROWS: dict[str, int] = {
    "gsm8k/train.jsonl": 7473,
    "gsm8k/test.jsonl": 1319,
    "mathqa/train.json": 29837,
    "mathqa/dev.json": 4475,
    "mathqa/test.json": 2985,
    "mathqa/challenge_test.json": 604,
    "openbookqa/Main/train.jsonl": 4957,
    "openbookqa/Main/dev.jsonl": 500,
    "openbookqa/Main/test.jsonl": 500,
    "openbookqa/Additional/train_complete.jsonl": 4957,
    "openbookqa/Additional/dev_complete.jsonl": 500,
    "openbookqa/Additional/test_complete.jsonl": 500,
    "hellaswag/hellaswag_train.jsonl": 39905,
    "hellaswag/hellaswag_val.jsonl": 10042,
    "hellaswag/validation.jsonl": 10042,  # the stand-in converted from the validation text
}


class RowCountError(ValueError):
    """A local file whose record count differs from the published one, where that changes a
    split drawn from it."""


HubRow = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class SplitSource:
    """One published split: candidate files in a data dir (the first that exists is read) and
    its name on the hub (None when the hub does not have it)."""

    files: tuple[str, ...]
    hub_split: str | None


@dataclass(frozen=True)
class DatasetSource:
    hub_id: str
    hub_config: str | None
    splits: dict[str, SplitSource]

    def hub_label(self, hub_split: str) -> str:
        config = f" (config {self.hub_config})" if self.hub_config else ""
        return f"{self.hub_id}{config} split {hub_split}"


def resolve_data_dir(data_dir: DataDir) -> Path | None:
    """The folder to read: the argument, else ``$SEGLM_DATA_DIR``, else None (the hub)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_VARIABLE) or None
    if chosen is None:
        return None
    root = Path(chosen).expanduser()
    if not root.is_dir():
        origin = "--data-dir" if data_dir not in (None, "") else f"${DATA_DIR_VARIABLE}"
        raise FileNotFoundError(f"data dir {root} (from {origin}) is not a folder")
    return root


def read_split(
    source: DatasetSource,
    split: str,
    data_dir: DataDir,
    report: LoadReport,
    hub_row: HubRow | None = None,
    held_out: float | None = None,
) -> Iterator[Record]:
    """The records of one published split, from the data dir or the hub (``hub_row`` maps a
    hub row to the published file's layout when the two differ). ``held_out``: the fraction of
    the file a split is drawn from; a local file with another record count than the published
    one is then refused, not only warned about."""
    entry = source.splits[split]
    root = resolve_data_dir(data_dir)
    if root is None:
        if entry.hub_split is None:
            raise FileNotFoundError(
                f"{source.hub_id} has no {split!r} split on the hub; "
                f"give --data-dir (or ${DATA_DIR_VARIABLE}) with {' or '.join(entry.files)}"
            )
        report.source = f"hub:{source.hub_label(entry.hub_split)}"
        return read_hub(source, entry.hub_split, split, hub_row or dict)
    name = next((name for name in entry.files if (root / name).is_file()), None)
    if name is None:
        raise FileNotFoundError(missing_file_message(source, root, entry))
    path = root / name
    report.source = str(path)
    return counted(read_file(path, split), path, PUBLISHED_ROWS.get(name), held_out)


def counted(
    records: Iterator[Record], path: Path, published: int | None, held_out: float | None
) -> Iterator[Record]:
    """``records``, then, once they are read to the end, the check of their count."""
    count = 0
    for record in records:
        count += 1
        yield record
    if published is not None and count != published:
        check_row_count(path, count, published, held_out)


def check_row_count(path: Path, found: int, published: int, held_out: float | None) -> None:
    problem = (
        f"{path} holds {found} records, but the published file holds {published}: it is cut "
        "short or not the published file"
    )
    if held_out is None:
        logger.warning("%s; results on it are not comparable with published ones", problem)
        return

    def size(rows: int) -> int:  # datasets' train_test_split rounds the held-out part up
        return math.ceil(rows * held_out)

    problem += (
        f", and the split held out of it would silently change ({size(found)} held-out "
        f"examples instead of {size(published)}, and another train split)"
    )
    if os.environ.get(ALLOW_ROW_COUNT_MISMATCH_VARIABLE) == "1":
        logger.warning("%s; splitting it anyway (%s=1)", problem, ALLOW_ROW_COUNT_MISMATCH_VARIABLE)
        return
    raise RowCountError(
        f"{problem}. Restore the published file, or set {ALLOW_ROW_COUNT_MISMATCH_VARIABLE}=1 "
        "to split this one anyway"
    )


def missing_file_message(source: DatasetSource, root: Path, entry: SplitSource) -> str:
    wanted = " or ".join(str(root / name) for name in entry.files)
    if entry.hub_split is None:
        return f"{wanted} is missing, and the hub has no such split"
    return (
        f"{wanted} is missing; the hub has it as {source.hub_label(entry.hub_split)} "
        f"(used when neither --data-dir nor ${DATA_DIR_VARIABLE} is set)"
    )


def read_file(path: Path, split: str) -> Iterator[Record]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, split)
    if path.suffix == ".json":
        return read_json_array(path, split)
    raise ValueError(f"{path}: unsupported file type; expected .jsonl or .json")


def read_jsonl(path: Path, split: str) -> Iterator[Record]:
    """JSON Lines: one record per non-blank line, parsed lazily so a bad line names its number."""
    with path.open("rb") as handle:
        index = 0
        for line_number, raw in enumerate(handle, start=1):
            line = decode_utf8(raw, path, line_number)
            if line.strip():
                yield Record(f"{path}:{line_number}", split, index, line)
                index += 1


def decode_utf8(raw: bytes, path: Path, line: int = 1) -> str:
    """Bytes of ``path`` as text; bytes that are not UTF-8 are an error naming file and line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line += raw.count(b"\n", 0, error.start)
        raise DataError(
            f"{path}:{line}",
            None,
            f"not UTF-8 text (byte {raw[error.start]:#04x}); save the file as UTF-8",
            "not UTF-8",
        ) from None


def read_json_array(path: Path, split: str) -> Iterator[Record]:
    """A file holding one JSON array of objects; each record names the line it starts on."""
    text = decode_utf8(path.read_bytes(), path)
    decoder = json.JSONDecoder()
    position = skip_space(text, 0)
    if text[position : position + 1] != "[":
        raise DataError(f"{path}:1", None, "expected a JSON array of records", "malformed JSON")
    position = skip_space(text, position + 1)
    line, counted_to, index = 1, 0, 0
    while text[position : position + 1] != "]":
        line += text.count("\n", counted_to, position)
        counted_to = position
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{error.lineno}", None, f"malformed JSON ({error.msg})", "malformed JSON"
            ) from None
        yield Record(f"{path}:{line}", split, index, value)
        index += 1
        position = skip_space(text, position)
        if text[position : position + 1] == ",":
            position = skip_space(text, position + 1)
        elif text[position : position + 1] != "]":
            line += text.count("\n", counted_to, position)
            raise DataError(f"{path}:{line}", None, "expected ',' or ']'", "malformed JSON")


def skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def read_hub(
    source: DatasetSource, hub_split: str, split: str, hub_row: HubRow
) -> Iterator[Record]:
    import datasets

    label = source.hub_label(hub_split)
    try:
        rows = datasets.load_dataset(source.hub_id, source.hub_config, split=hub_split)
    except Exception as error:  # network, auth and format errors all end here: say what was tried
        raise RuntimeError(
            f"could not load {label} from the Hugging Face hub: {error}. Offline, point "
            f"--data-dir or ${DATA_DIR_VARIABLE} at a folder of the published files"
        ) from error
    for index, row in enumerate(rows):
        yield Record(f"{label} row {index}", split, index, hub_row(row))


def holdout_split(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held out) of ``datasets.Dataset.train_test_split(test_size=fraction,
    seed=seed)``: the exact split the research code made, in the order it made it."""
    import datasets

    parts = datasets.Dataset.from_dict({"index": list(range(size))}).train_test_split(
        test_size=fraction, seed=seed
    )
    return list(parts["train"]["index"]), list(parts["test"]["index"])
