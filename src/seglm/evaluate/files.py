"""The evaluation folder: its settings, the lock, the streamed predictions file, ranks' shares."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from seglm.distributed import Ranks
from seglm.evaluate.common import EvalError
from seglm.folders import (
    FolderError,
    check_replaceable,
    hold,
    ownership,
    record_files,
    remove_owned,
)
from seglm.json_lines import iter_jsonl
from seglm.metrics import PredictionsFileError
from seglm.runs import (
    EVAL_SETTINGS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    differences,
    write_json,
)

logger = logging.getLogger(__name__)


EVAL_ADVICE = (
    "wait for it to finish (a rerun then resumes from its predictions), or choose another "
    "--output-dir"
)


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold the output folder for one evaluation (:func:`seglm.folders.hold`): a second
    evaluation into it is refused at once, naming the process that holds it, instead of both
    appending the same predictions; a folder that is not empty and that seglm did not make is
    refused, naming its first file."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(hold(out_dir, "evaluation", EVAL_ADVICE))
        except FolderError as error:
            raise EvalError(str(error)) from None
        yield


EVAL_FILES = (EVAL_SETTINGS_FILE, PREDICTIONS_FILE, METRICS_FILE)


def prepare_out_dir(
    out_dir: Path, identity: dict[str, Any], overwrite: bool, world: int = 1
) -> None:
    """Check that the folder holds this evaluation (``identity``: what eval_config.json holds)
    to resume it, or start it (``overwrite``: seglm's evaluation files removed first; other
    files stay). ``world``: the processes that write a share of the predictions."""
    shares = [f"predictions.rank{rank}.jsonl" for rank in range(world)] if world > 1 else []
    names = [*EVAL_FILES, *(share.name for share in out_dir.glob(SHARE_PATTERN)), *shares]
    try:
        if overwrite:
            remove_owned(out_dir, names)
        owned = ownership(out_dir)
        for name in names:
            check_replaceable(out_dir, name, owned)
    except FolderError as error:
        raise EvalError(str(error)) from None
    settings_file = out_dir / EVAL_SETTINGS_FILE
    if settings_file.is_file():
        try:
            previous = json.loads(settings_file.read_text())
        except ValueError as error:
            raise EvalError(f"{settings_file}: not valid JSON ({error})") from None
        changed = differences(previous, identity)
        if changed:
            details = "; ".join(changed)
            raise EvalError(
                f"{out_dir} holds another evaluation ({details}); pass --overwrite to replace "
                "it or choose another output folder"
            )
        record_files(out_dir, *names)
        return
    if (out_dir / PREDICTIONS_FILE).exists():
        raise EvalError(
            f"{out_dir / PREDICTIONS_FILE} exists without {EVAL_SETTINGS_FILE}: not an "
            "evaluation seglm can resume; pass --overwrite to start it again"
        )
    record_files(out_dir, *names)
    write_json(settings_file, identity)


RECORD_FIELDS: dict[str, type] = {
    "id": str,
    "prompt": str,
    "prediction": str,
    "reference": str,
    "metrics": dict,
}
LOGLIK_FIELDS: dict[str, type] = {"context": str, "choices": list, "logliks": list, "gold": int}


def read_predictions(path: Path, scoring: str) -> dict[str, dict[str, Any]]:
    """The records in ``path`` by id. A last line cut short by a crash (no newline, not JSON) is
    dropped from the file with a warning; a line repeating an earlier one for the same id
    (metrics aside, which are recomputed) is skipped with a warning, and the file rewritten at
    the end of the evaluation leaves it out; any other bad line is an error naming it."""
    if not path.is_file():
        return {}
    records: dict[str, dict[str, Any]] = {}
    lines_of: dict[str, int] = {}
    for number, record in iter_jsonl(path, error=PredictionsFileError, repair=True):
        where = f"{path}, line {number}"
        check_record(record, where, scoring)
        if record["id"] in records:
            first = lines_of[record["id"]]
            if _same_prediction(record, records[record["id"]]):
                logger.warning(
                    "%s: skipped a duplicate of line %d (id %r, same prediction)",
                    where,
                    first,
                    record["id"],
                )
                continue
            raise PredictionsFileError(
                f"{where}: id {record['id']!r} is also on line {first}, with another "
                "prediction; keep one of the two lines, or start again with --overwrite"
            )
        records[record["id"]] = record
        lines_of[record["id"]] = number
    return records


def _same_prediction(record: dict[str, Any], other: dict[str, Any]) -> bool:
    """Two lines for one id that say the same; their metrics are recomputed at the end."""
    return {k: v for k, v in record.items() if k != "metrics"} == {
        k: v for k, v in other.items() if k != "metrics"
    }


def check_record(record: dict[str, Any], where: str, scoring: str) -> None:
    _check_fields(record, RECORD_FIELDS, where, "")
    if scoring != "generate":
        if not isinstance(record.get("loglik"), dict):
            raise PredictionsFileError(f"{where}: missing field 'loglik' (an object)")
        _check_fields(record["loglik"], LOGLIK_FIELDS, where, "loglik.")
        values = record["loglik"]["logliks"]
        if len(values) != len(record["loglik"]["choices"]) or not all(
            isinstance(v, int | float) for v in values
        ):
            raise PredictionsFileError(f"{where}: 'loglik.logliks' needs one number per choice")


def _check_fields(record: dict[str, Any], fields: dict[str, type], where: str, prefix: str) -> None:
    for name, kind in fields.items():
        if name not in record:
            raise PredictionsFileError(f"{where}: missing field {prefix + name!r}")
        if not isinstance(record[name], kind) or isinstance(record[name], bool):
            raise PredictionsFileError(
                f"{where}: field {prefix + name!r} must be a {kind.__name__}, "
                f"got {type(record[name]).__name__}"
            )


def append_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append whole lines and make them durable before the next batch starts."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


SHARE_PATTERN = "predictions.rank*.jsonl"


def share_file(out_dir: Path, ranks: Ranks) -> Path:
    """Where a rank streams its share of the predictions under a multi-process launch."""
    return out_dir / f"predictions.rank{ranks.rank}.jsonl"


def read_done_predictions(out_dir: Path, scoring: str) -> dict[str, dict[str, Any]]:
    """The predictions made so far: the predictions file and any rank's share (an interrupted
    multi-process evaluation resumes from them, whatever the number of processes now)."""
    done = read_predictions(out_dir / PREDICTIONS_FILE, scoring)
    for path in sorted(out_dir.glob(SHARE_PATTERN)):
        for key, record in read_predictions(path, scoring).items():
            done.setdefault(key, record)
    return done


def merge_shares(out_dir: Path, scoring: str) -> None:
    """Append the ranks' shares to the predictions file (what it lacks), then remove them."""
    shares = sorted(out_dir.glob(SHARE_PATTERN))
    if not shares:
        return
    path = out_dir / PREDICTIONS_FILE
    have = read_predictions(path, scoring)
    for share in shares:
        new = [r for key, r in read_predictions(share, scoring).items() if key not in have]
        append_records(path, new)
        have.update((record["id"], record) for record in new)
    for share in shares:
        share.unlink()
