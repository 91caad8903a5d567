"""``evaluate(model_ref, task, split, out_dir, ...) -> EvalResult``: score a model, a model plus a
LoRA adapter, or a seglm run folder on a task split.

The output folder holds:

- ``eval_config.json``: the settings that define the evaluation; a rerun into the folder must
  have the same ones;
- ``predictions.jsonl``: one line per example (id, prompt, prediction, reference, the example's
  metrics, and for log-likelihood scoring each choice's log-likelihood), appended and flushed
  after every batch. A rerun skips the ids already there, so an interrupted evaluation loses
  nothing; a last line torn by a crash is dropped with a warning. At the end the file is
  rewritten in dataset order with every example's metrics recomputed;
- ``metrics.json``: the means over the predictions, the settings and the throughput.

Scorings: ``generate`` (batched greedy generation, left padding, KV cache, stopped at EOS and at
the task's stop strings, scored by :mod:`seglm.metrics`), ``loglik`` (multiple choice, the
lm-evaluation-harness convention: ``acc`` and ``acc_norm``) and ``both``. docs/evaluation.md
describes each, and where they differ from lm-evaluation-harness.

Importing this module is cheap (no torch, no transformers): experiments import it to call
``evaluate`` in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seglm.choices import check_choice
from seglm.config import TrainConfig, load_run_config
from seglm.distributed import Ranks, current_ranks, gather, together
from seglm.metrics import (
    ANSWER_FORMATS,
    PredictionsFileError,
    aggregate,
    count_scored,
    score_prediction,
)
from seglm.metrics.exact_match import check_answer_match, reference_answer
from seglm.runs import (
    EVAL_LOCK_FILE,
    EVAL_SETTINGS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RUN_CONFIG_FILE,
    TRAIN_REPORT_FILE,
    differences,
    folder_problem,
    last_complete_checkpoint,
    write_atomically,
)
from seglm.tasks import Example, Task, get_task
from seglm.tasks.base import LETTERS

logger = logging.getLogger(__name__)

SCORINGS = ("generate", "loglik", "both")
LM_EVAL_FEWSHOT_SEED = 1234  # lm-evaluation-harness's default few-shot seed
FEWSHOT_SPLIT = "train"
FEWSHOT_DELIMITER = "\n\n"  # lm-evaluation-harness's fewshot_delimiter
CHOICE_DELIMITER = " "  # lm-evaluation-harness's target_delimiter before each choice
DEFAULT_BATCH_SIZES = {"cpu": 32, "cuda": 64}
FALLBACK_BATCH_SIZE = 16
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
OUT_OF_MEMORY = ("out of memory", "can't allocate memory")


class EvalError(ValueError):
    """Bad input to an evaluation: names the file, field or setting and what was expected."""


# -- models ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """Where an evaluation's weights and tokenizer come from; nothing is loaded yet."""

    name: str  # what metrics.json records
    base: str  # the model to load: alias, hub id or folder
    adapter: str | None  # a PEFT adapter folder to apply to ``base``
    tokenizer: str
    run_config: TrainConfig | None = None
    # Only the caller's explicit choice: a run folder is data, never a source of trust.
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    """A model and its tokenizer, ready to evaluate; pass one to :func:`evaluate` so that it is
    not loaded again. ``run_config`` (a seglm run's config) gives the default task."""

    model: Any
    tokenizer: Any
    name: str = "in-memory model"
    adapter: str | None = None
    run_config: TrainConfig | None = None


def resolve_model(
    model_ref: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None = None,
    *,
    trust_remote_code: bool = False,
) -> ModelSource:
    """What ``model_ref`` names: a seglm run folder (``config.yaml`` and weights at its root), an
    adapter folder (``adapter_config.json``, e.g. a run's checkpoint), or a model (alias, hub id,
    folder), optionally with ``adapter``.

    Custom model code (an ``auto_map`` in the model's config) runs only with
    ``trust_remote_code``; a run folder's own ``trust_remote_code: true`` is ignored."""
    source = _resolve_model(model_ref, adapter)
    return dataclasses.replace(source, trust_remote_code=trust_remote_code)


def _resolve_model(
    model_ref: str | os.PathLike[str], adapter: str | os.PathLike[str] | None
) -> ModelSource:
    path = Path(model_ref)
    if (path / RUN_CONFIG_FILE).is_file() or (path / "adapter_config.json").is_file():
        if adapter is not None:
            raise EvalError(
                f"{path} carries its own weights; an adapter goes with a base model only"
            )
        if (path / RUN_CONFIG_FILE).is_file():
            return _run_folder_source(path)
        return _adapter_source(path, base=None)
    if adapter is not None:
        return _adapter_source(Path(adapter), base=str(model_ref))
    from seglm.models import model_name_problem

    problem = model_name_problem(str(model_ref))
    if problem:
        raise EvalError(problem)
    # A full fine-tuning checkpoint is a model folder inside its run folder.
    run_config = _parent_run_config(path) if path.is_dir() else None
    return ModelSource(str(model_ref), str(model_ref), None, str(path), run_config)


def _run_folder_source(run_dir: Path) -> ModelSource:
    config = load_run_config(run_dir)
    tokenizer = str(run_dir) if _has_tokenizer(run_dir) else config.model
    if _has_any(run_dir, ADAPTER_WEIGHTS):
        return ModelSource(str(run_dir), config.model, str(run_dir), tokenizer, config)
    if _has_any(run_dir, MODEL_WEIGHTS):
        return ModelSource(str(run_dir), str(run_dir), None, tokenizer, config)
    problem = f"run folder {run_dir} has no weights at its root (expected {ADAPTER_WEIGHTS[0]} "
    problem += f"for LoRA or {MODEL_WEIGHTS[0]} for full fine-tuning)"
    if not (run_dir / TRAIN_REPORT_FILE).is_file():
        problem += "; its training has not finished (no train_report.json)"
    checkpoint, _ = last_complete_checkpoint(run_dir)  # not one a kill cut short while saving
    if checkpoint is not None:
        problem += f"; a checkpoint can be evaluated instead, e.g. {checkpoint}"
    raise EvalError(problem)


def _adapter_source(folder: Path, base: str | None) -> ModelSource:
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise EvalError(f"adapter {folder}: no adapter_config.json (not a PEFT adapter folder)")
    if not _has_any(folder, ADAPTER_WEIGHTS):
        raise EvalError(f"adapter {folder}: no weights ({' or '.join(ADAPTER_WEIGHTS)})")
    run_config = _parent_run_config(folder)
    if base is None:
        base = run_config.model if run_config else _adapter_base(config_file)
    tokenizer = str(folder) if _has_tokenizer(folder) else base
    return ModelSource(str(folder), base, str(folder), tokenizer, run_config)


def _parent_run_config(folder: Path) -> TrainConfig | None:
    """The run's config when ``folder`` is one of its checkpoints."""
    config_file = folder.parent / RUN_CONFIG_FILE
    return load_run_config(folder.parent) if config_file.is_file() else None


def _adapter_base(config_file: Path) -> str:
    try:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as error:
        raise EvalError(f"{config_file}: not a readable adapter config ({error})") from None
    if not isinstance(base, str) or not base:
        raise EvalError(f"{config_file}: field 'base_model_name_or_path' is missing")
    return base


def _has_any(folder: Path, names: Sequence[str]) -> bool:
    return any((folder / name).is_file() for name in names)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()


def load_source_tokenizer(source: ModelSource) -> Any:
    from seglm.models import load_tokenizer

    config = source.run_config
    if config is not None and config.trust_remote_code and not source.trust_remote_code:
        logger.warning(
            "%s: the run's config.yaml sets trust_remote_code: true; ignored, since a run folder "
            "is data: no code from it runs unless you pass --trust-remote-code "
            "(trust_remote_code=True)",
            source.name,
        )
    with _remote_code_refused(source, source.tokenizer):
        return load_tokenizer(source.tokenizer, trust_remote_code=source.trust_remote_code)


@contextlib.contextmanager
def _remote_code_refused(source: ModelSource, what: str) -> Iterator[None]:
    """transformers refuses a model whose config maps it to custom code (``auto_map``) unless
    trusted; say how seglm lets the user trust it."""
    try:
        yield
    except ValueError as error:
        if source.trust_remote_code or "trust_remote_code" not in str(error):
            raise
        raise EvalError(
            f"{what} needs custom code (an auto_map in its config) to load, and seglm runs no "
            "code from a model or run folder on its own (a run folder's trust_remote_code "
            "setting counts for nothing); read that code, then pass --trust-remote-code "
            "(trust_remote_code=True) to run it"
        ) from None


def load_source_model(
    source: ModelSource, tokenizer: Any, dtype: str = "fp32", device: str | None = None
) -> LoadedModel:
    """Load the weights ``source`` names; a LoRA adapter is merged (no cost per token)."""
    from seglm.models import load_model

    with _remote_code_refused(source, source.base):
        model = load_model(source.base, dtype=dtype, trust_remote_code=source.trust_remote_code)
    if source.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter).merge_and_unload()
    model.to(device or default_device()).eval()
    check_vocabulary(model, tokenizer, source.name)
    return LoadedModel(model, tokenizer, source.name, source.adapter, source.run_config)


def load_for_eval(
    model_ref: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    dtype: str = "fp32",
    device: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model (alias, hub id, folder, run folder or adapter folder) to evaluate it on
    several tasks without loading it again; ``trust_remote_code`` runs a model's custom code."""
    source = resolve_model(model_ref, adapter, trust_remote_code=trust_remote_code)
    return load_source_model(source, load_source_tokenizer(source), dtype, device)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_vocabulary(model: Any, tokenizer: Any, name: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise EvalError(
            f"the tokenizer has {len(tokenizer)} tokens but model {name} embeds only {rows}: "
            "they do not belong together"
        )


def dtype_name(model: Any) -> str:
    from seglm.models import DTYPES

    return next(name for name, dtype in DTYPES.items() if dtype == model.dtype)


# -- settings and the output folder ------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """What defines an evaluation: a rerun into the same folder must have the same settings.
    (The selection, ``limit`` and ``random_subset``, may change: predictions are kept by id.)"""

    model: str
    adapter: str | None
    task: str
    task_options: dict[str, Any]
    split: str
    scoring: str
    num_fewshot: int
    seed: int
    max_new_tokens: int | None
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold the output folder for one evaluation: an exclusive ``flock`` on ``EVAL_LOCK_FILE``
    in it, so a second evaluation into the folder is refused at once, naming the process that holds
    it, instead of both appending the same predictions. The kernel drops the lock when the
    holder exits, however it exits (a stale lock file blocks no one)."""
    import fcntl
    import socket

    problem = folder_problem(out_dir)
    if problem:
        raise EvalError(f"output folder: {problem}; choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / EVAL_LOCK_FILE, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not said which yet"
            raise EvalError(
                f"{out_dir} is in use by another evaluation ({holder}); wait for it to "
                "finish (a rerun then resumes from its predictions), or choose another "
                "--output-dir"
            ) from None
        except OSError as error:  # a file system without locks (ENOLCK, EOPNOTSUPP)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            logger.warning(
                "%s: cannot lock it (%s); a second evaluation into it would not be noticed",
                out_dir,
                error,
            )
            unlocked = True
        else:
            unlocked = False
        if unlocked:
            yield
            return
        try:
            handle.seek(0)
            handle.truncate()
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_out_dir(out_dir: Path, settings: EvalSettings, overwrite: bool) -> None:
    """Create the folder, or check that it holds this evaluation (to resume it)."""
    settings_file = out_dir / EVAL_SETTINGS_FILE
    if overwrite:
        for name in (EVAL_SETTINGS_FILE, PREDICTIONS_FILE, METRICS_FILE):
            (out_dir / name).unlink(missing_ok=True)
        for share in out_dir.glob(SHARE_PATTERN):
            share.unlink()
    if settings_file.is_file():
        try:
            previous = json.loads(settings_file.read_text())
        except ValueError as error:
            raise EvalError(f"{settings_file}: not valid JSON ({error})") from None
        changed = differences(previous, settings.to_dict())
        if changed:
            details = "; ".join(changed)
            raise EvalError(
                f"{out_dir} holds another evaluation ({details}); pass --overwrite to replace "
                "it or choose another output folder"
            )
        return
    if (out_dir / PREDICTIONS_FILE).exists():
        raise EvalError(
            f"{out_dir / PREDICTIONS_FILE} exists without {EVAL_SETTINGS_FILE}: seglm did not "
            "write it; choose another output folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings.to_dict(), indent=2) + "\n")


# -- the predictions file ----------------------------------------------------------------------

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
    data = path.read_bytes()
    records: dict[str, dict[str, Any]] = {}
    lines_of: dict[str, int] = {}
    offset = 0
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        start, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(raw)
        except ValueError as error:
            if raw.endswith(b"\n"):
                raise PredictionsFileError(f"{where}: not valid JSON ({error})") from None
            logger.warning("%s: dropped a line torn by an interrupted write", where)
            with path.open("r+b") as handle:
                handle.truncate(start)
            return records
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
    if data and not data.endswith(b"\n"):
        with path.open("ab") as handle:
            handle.write(b"\n")
    return records


def _same_prediction(record: dict[str, Any], other: dict[str, Any]) -> bool:
    """Two lines for one id that say the same; their metrics are recomputed at the end."""
    return {k: v for k, v in record.items() if k != "metrics"} == {
        k: v for k, v in other.items() if k != "metrics"
    }


def check_record(record: Any, where: str, scoring: str) -> None:
    if not isinstance(record, dict):
        raise PredictionsFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
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


# -- tasks, examples and prompts ---------------------------------------------------------------


def build_task(
    name: str | None,
    options: dict[str, Any] | None,
    chat_template: bool,
    tokenizer: Any,
    run_config: TrainConfig | None,
) -> Task:
    """The task to evaluate; a run folder's task and options are the defaults."""
    if name is None:
        if run_config is None:
            raise EvalError("no task given, and the model is not a seglm run folder that names one")
        name = run_config.task
    chosen: dict[str, Any] = {}
    if run_config is not None:
        same_task = run_config.task.lower() == name.lower()
        # For another task, only the way the model was prompted carries over.
        chosen = {
            key: value
            for key, value in run_config.task_options.items()
            if same_task or key == "prompt_style"
        }
    chosen.update(options or {})
    if chat_template:
        chosen["prompt_style"] = "chat"
    return get_task(name, tokenizer=tokenizer, **chosen)


def resolved_options(task: Task) -> dict[str, Any]:
    """A task's options with their values (defaults included), without the tokenizer."""
    return {
        f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name != "tokenizer"
    }


def check_task_fits(
    task: Task, scoring: str, run_config: TrainConfig | None, tokenizer: Any
) -> None:
    """The task must be scorable the requested way, and a run's model must answer its format."""
    if task.answer_format not in ANSWER_FORMATS:
        raise EvalError(
            f"task {task.name!r} answers in format {task.answer_format!r}, which seglm.metrics "
            f"cannot score (formats: {', '.join(ANSWER_FORMATS)})"
        )
    if scoring != "generate" and task.answer_format != "choice":
        raise EvalError(
            f"scoring {scoring!r} needs a multiple-choice task; {task.name!r} answers in "
            f"format {task.answer_format!r} (use scoring 'generate')"
        )
    if run_config is None or run_config.task.lower() == task.name:
        return
    trained = get_task(run_config.task, tokenizer=tokenizer, **run_config.task_options)
    if trained.answer_format != task.answer_format:
        raise EvalError(
            f"the model was trained on {trained.name!r} (answers in format "
            f"{trained.answer_format!r}) but {task.name!r} answers in format "
            f"{task.answer_format!r}; pass allow_task_mismatch (--allow-task-mismatch) to "
            "evaluate it anyway"
        )


def select_examples(
    task: Task, split: str, data_dir: str | None, limit: int | None, random_subset: bool, seed: int
) -> list[Example]:
    """The examples to evaluate: all, the first ``limit``, or ``limit`` drawn with ``seed``."""
    examples = task.load(split, data_dir=data_dir, limit=None if random_subset else limit)
    if not examples:
        raise EvalError(f"task {task.name!r}, split {split!r} has no examples")
    if random_subset and limit is not None and limit < len(examples):
        chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
        examples = [examples[i] for i in chosen]
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise EvalError(
                f"task {task.name!r}, split {split!r}: example id {example.id!r} appears twice; "
                "predictions are kept by id"
            )
        seen.add(example.id)
    return examples


def check_references(answer_format: str, examples: Sequence[Example]) -> None:
    """Fail before generating when a reference has no answer to compare with."""
    for example in examples:
        try:
            reference_answer(answer_format, example.reference)
        except ValueError as error:
            raise EvalError(f"example {example.id}: {error}") from None


def load_fewshot_pool(task: Task, split: str, data_dir: str | None, shots: int) -> list[Example]:
    """The examples few-shot exemplars are drawn from: the train split, never the evaluated one."""
    if shots == 0:
        return []
    if task.prompt_style != "plain":
        raise EvalError(
            "few-shot exemplars are plain text; they cannot be combined with the chat template "
            "(prompt_style=chat)"
        )
    if task.resolve_split(split) == FEWSHOT_SPLIT:
        raise EvalError(
            f"few-shot exemplars come from the {FEWSHOT_SPLIT!r} split; evaluate another split"
        )
    try:
        pool = task.load(FEWSHOT_SPLIT, data_dir=data_dir)
    except (ValueError, FileNotFoundError) as error:
        raise EvalError(
            f"num_fewshot needs the {FEWSHOT_SPLIT!r} split of {task.name!r}: {error}"
        ) from None
    if len(pool) < shots:
        raise EvalError(f"num_fewshot={shots} but {task.name!r} has {len(pool)} train examples")
    return pool


def draw_shots(pool: Sequence[Example], shots: int, seed: int, example: Example) -> list[Example]:
    """The exemplars for one example; seeded by the example's id, so a resumed evaluation draws
    the same ones whatever was evaluated before."""
    if shots == 0:
        return []
    return random.Random(f"{seed}:{example.id}").sample(pool, shots)


@dataclass(frozen=True)
class Request:
    """One example ready to score: the generation prompt and the (context, choice) token pairs."""

    example: Example
    prompt: str
    prompt_ids: list[int]
    context: str = ""
    choices: tuple[str, ...] = ()
    pairs: tuple[tuple[list[int], list[int]], ...] = ()

    @property
    def length(self) -> int:
        return max([len(self.prompt_ids), *(len(c) + len(x) for c, x in self.pairs)])


def build_requests(
    task: Task,
    examples: Sequence[Example],
    tokenizer: Any,
    scoring: str,
    pool: Sequence[Example],
    shots: int,
    seed: int,
) -> list[Request]:
    from seglm.data import encode_prompts

    drawn = [draw_shots(pool, shots, seed, example) for example in examples]
    prompts = [
        "".join(s.prompt + s.reference + FEWSHOT_DELIMITER for s in shot_list) + example.prompt
        for example, shot_list in zip(examples, drawn, strict=True)
    ]
    prompt_ids = [ids for ids, _ in encode_prompts(tokenizer, prompts)]
    if scoring == "generate":
        return [Request(*fields) for fields in zip(examples, prompts, prompt_ids, strict=True)]
    requests = []
    for example, prompt, ids, shot_list in zip(examples, prompts, prompt_ids, drawn, strict=True):
        context, choices = task.loglik_query(example)
        context = "".join(_solved(task, shot) for shot in shot_list) + context
        pairs = encode_pairs(tokenizer, context, [CHOICE_DELIMITER + c for c in choices])
        requests.append(Request(example, prompt, ids, context, tuple(choices), pairs))
    return requests


def _solved(task: Task, shot: Example) -> str:
    context, choices = task.loglik_query(shot)
    assert shot.label is not None
    return f"{context}{CHOICE_DELIMITER}{choices[shot.label]}{FEWSHOT_DELIMITER}"


def encode_pairs(
    tokenizer: Any, context: str, continuations: Sequence[str]
) -> tuple[tuple[list[int], list[int]], ...]:
    """(context ids, continuation ids) as lm-evaluation-harness makes them: the joined text is
    tokenised and split after the context's tokens, and trailing spaces of the context move to
    the continuation."""
    from seglm.data import encode_texts, leading_special_ids

    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuations = context[:-spaces], [" " * spaces + c for c in continuations]
    context_ids, *wholes = encode_texts(tokenizer, [context, *(context + c for c in continuations)])
    prefix = leading_special_ids(tokenizer)
    return tuple((prefix + context_ids, whole[len(context_ids) :]) for whole in wholes)


# -- scoring a batch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    text: str  # decoded, cut before the first stop string
    tokens: int  # generated tokens up to EOS or the stop
    finish: str  # "stop" (a stop string), "eos", or "length" (max_new_tokens reached)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [index for stop in stop_strings if (index := text.find(stop)) >= 0]
    return min(found) if found else None


def loglik_metrics(loglik: dict[str, Any]) -> dict[str, float]:
    """lm-evaluation-harness's ``acc`` (highest log-likelihood) and ``acc_norm`` (highest
    log-likelihood per character of the choice)."""
    values, choices, gold = loglik["logliks"], loglik["choices"], loglik["gold"]
    normalised = [value / len(choice) for value, choice in zip(values, choices, strict=True)]
    return {
        "acc": float(_argmax(values) == gold),
        "acc_norm": float(_argmax(normalised) == gold),
    }


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def example_metrics(
    answer_format: str, scoring: str, record: dict[str, Any], answer_match: str = "seglm"
) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if scoring != "loglik":
        metrics.update(
            score_prediction(answer_format, record["prediction"], record["reference"], answer_match)
        )
    if scoring != "generate":
        metrics.update(loglik_metrics(record["loglik"]))
    return metrics


class Scorer:
    """Scores batches of requests with one model: greedy generation and/or choice
    log-likelihoods, returning one predictions-file record per request."""

    def __init__(
        self,
        loaded: LoadedModel,
        task: Task,
        scoring: str,
        max_new_tokens: int,
    ) -> None:
        from transformers import GenerationConfig, StoppingCriteriaList

        from seglm.data import DataCollator

        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.answer_format, self.scoring = task.answer_format, scoring
        self.device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        self.collate = DataCollator(pad, padding_side="left")
        eos = eos_ids(self.model, self.tokenizer)
        self.end_ids = {*eos, pad}
        self.stop_strings = tuple(task.stop_strings)
        self.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        self.stopping = (
            StoppingCriteriaList([stop_string_criteria(self.tokenizer, self.stop_strings)])
            if self.stop_strings
            else None
        )

    def __call__(self, batch: Sequence[Request], size: int) -> tuple[list[dict[str, Any]], int]:
        """The records of ``batch`` and the number of generated tokens; ``size`` bounds the
        number of sequences per forward pass."""
        generations = self.generate(batch) if self.scoring != "loglik" else None
        logliks = self.logliks(batch, size) if self.scoring != "generate" else None
        records = [
            self.record(
                request,
                generations[i] if generations else None,
                logliks[i] if logliks else None,
            )
            for i, request in enumerate(batch)
        ]
        return records, sum(g.tokens for g in generations or ())

    def record(
        self, request: Request, generation: Generation | None, logliks: list[float] | None
    ) -> dict[str, Any]:
        """The predictions-file line; without generation, the prediction is the letter of the
        most likely choice and the prompt is the log-likelihood context."""
        example = request.example
        if generation is not None:
            prompt, prediction = request.prompt, generation.text
        else:
            assert logliks is not None
            prompt, prediction = request.context, LETTERS[_argmax(logliks)]
        record: dict[str, Any] = {
            "id": example.id,
            "prompt": prompt,
            "prediction": prediction,
            "reference": example.reference,
            "metrics": {},  # filled last, from the fields below; kept here for the key order
        }
        if generation is not None:
            record.update(finish=generation.finish, generated_tokens=generation.tokens)
        if logliks is not None:
            record["loglik"] = {
                "context": request.context,
                "choices": list(request.choices),
                "logliks": logliks,
                "gold": example.label,
            }
        record["metrics"] = example_metrics(self.answer_format, self.scoring, record)
        return record

    def inputs(self, rows: Sequence[list[int]]) -> dict[str, Any]:
        features = [{"input_ids": row, "attention_mask": [1] * len(row)} for row in rows]
        return {key: value.to(self.device) for key, value in self.collate(features).items()}

    def generate(self, batch: Sequence[Request]) -> list[Generation]:
        import torch

        inputs = self.inputs([request.prompt_ids for request in batch])
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, generation_config=self.generation_config, stopping_criteria=self.stopping
            )
        width = inputs["input_ids"].shape[1]
        return [self.read_generation(row) for row in output[:, width:].tolist()]

    def read_generation(self, ids: list[int]) -> Generation:
        end = next((i for i, token in enumerate(ids) if token in self.end_ids), None)
        kept = ids if end is None else ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        stop = cut_at_stop(text, self.stop_strings)
        if stop is not None:
            return Generation(text[:stop], len(kept), "stop")
        return Generation(text, len(kept), "length" if end is None else "eos")

    def logliks(self, batch: Sequence[Request], size: int) -> list[list[float]]:
        pairs = [pair for request in batch for pair in request.pairs]
        values: list[float] = []
        for start in range(0, len(pairs), size):
            values.extend(self.pair_logliks(pairs[start : start + size]))
        grouped, position = [], 0
        for request in batch:
            grouped.append(values[position : position + len(request.pairs)])
            position += len(request.pairs)
        return grouped

    def pair_logliks(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Sum of log p(continuation token | everything before it), per (context, continuation).

        A context shared by several pairs (the choices of one question) is run once: its last
        position gives each continuation's first token, and its KV cache, repeated for each
        pair, the rest. Contexts are left-padded and continuations right-padded, so every
        real position sees exactly its own prefix."""
        import torch

        contexts: dict[tuple[int, ...], int] = {}
        owner = [contexts.setdefault(tuple(context), len(contexts)) for context, _ in pairs]
        inputs = self.inputs([list(context) for context in contexts])
        mask = inputs["attention_mask"]
        with torch.inference_mode():
            prefix = self.model(
                **inputs,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            first = torch.log_softmax(prefix.logits[:, -1].float(), dim=-1)
            rows = torch.tensor(owner, device=self.device)
            heads = torch.tensor([continuation[0] for _, continuation in pairs], device=rows.device)
            values = first[rows, heads]
            width = max(len(continuation) for _, continuation in pairs) - 1
            if width > 0:
                rest = self.continuation_logprobs(pairs, rows, mask, prefix.past_key_values, width)
                values = values + rest
        return values.tolist()

    def continuation_logprobs(
        self,
        pairs: Sequence[tuple[list[int], list[int]]],
        rows: Any,
        mask: Any,
        cache: Any,
        width: int,
    ) -> Any:
        """Log-probabilities of each continuation's tokens after the first, from its context's
        cache: the continuation (but its last token) is fed right-padded to ``width``."""
        import torch

        cache.reorder_cache(rows)  # one cache row per pair (repeated for shared contexts)
        feed = torch.full((len(pairs), width), int(self.collate.pad_token_id), dtype=torch.long)
        real = torch.zeros(len(pairs), width, dtype=torch.long)
        for row, (_, continuation) in enumerate(pairs):
            feed[row, : len(continuation) - 1] = torch.tensor(continuation[:-1])
            real[row, : len(continuation) - 1] = 1
        feed, real = feed.to(self.device), real.to(self.device)
        context_lengths = mask.sum(-1)[rows]
        positions = context_lengths[:, None] + torch.arange(width, device=self.device)
        logits = self.model(
            input_ids=feed,
            attention_mask=torch.cat([mask[rows], real], dim=1),
            position_ids=positions,
            past_key_values=cache,
            use_cache=False,
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        values = []
        for row, (_, continuation) in enumerate(pairs):
            targets = torch.tensor(continuation[1:], device=self.device)[:, None]
            values.append(logprobs[row, : len(continuation) - 1].gather(-1, targets).sum())
        return torch.stack(values)


@functools.lru_cache(maxsize=8)
def stop_string_criteria(tokenizer: Any, stop_strings: tuple[str, ...]) -> Any:
    """transformers' stop-string criterion, built once per tokenizer: building it indexes the
    whole vocabulary (1-6 s for 49k tokens), and transformers' own cache misses because its key
    is the vocabulary in ``get_vocab()`` order, which a fast tokenizer shuffles on every call.
    The criterion keeps no state between calls, so sharing it is safe."""
    from transformers import StopStringCriteria

    return StopStringCriteria(tokenizer, list(stop_strings))


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS and those of the model's generation config (SmolLM2: <|im_end|>)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [tokenizer.eos_token_id, *ids] if i is not None})


# -- running batches ---------------------------------------------------------------------------


@dataclass
class Throughput:
    """What this invocation scored, and how fast."""

    examples: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    @classmethod
    def combined(cls, parts: Sequence[Throughput]) -> Throughput:
        """Ranks that ran side by side: their examples and tokens add up, the time is the
        slowest rank's."""
        return cls(
            sum(part.examples for part in parts),
            sum(part.generated_tokens for part in parts),
            max(part.seconds for part in parts),
        )

    def to_dict(self) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        return {
            "examples": self.examples,
            "generated_tokens": self.generated_tokens,
            "seconds": round(self.seconds, 3),
            "examples_per_s": round(self.examples / seconds, 4) if self.examples else 0.0,
            "tokens_per_s": round(self.generated_tokens / seconds, 2) if self.examples else 0.0,
        }

    def describe(self) -> str:
        """``1.20 ex/s, 150 tok/s`` (generated tokens; none when only scoring choices)."""
        rates = self.to_dict()
        text = f"{rates['examples_per_s']:.2f} ex/s"
        return text + (f", {rates['tokens_per_s']:.0f} tok/s" if self.generated_tokens else "")


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in OUT_OF_MEMORY)


def run_batches(
    requests: Sequence[Request],
    batch_size: int,
    score: Callable[[Sequence[Request], int], tuple[list[dict[str, Any]], int]],
    write: Callable[[list[dict[str, Any]]], None],
    on_batch: Callable[[Throughput, int], None] = lambda throughput, advance: None,
) -> Throughput:
    """Score ``requests`` longest first (less padding; an out-of-memory error comes at once), in
    batches of ``batch_size``, halved whenever a batch runs out of memory."""
    ordered = sorted(requests, key=lambda request: request.length, reverse=True)
    throughput = Throughput()
    started = time.perf_counter()
    position, size = 0, batch_size
    while position < len(ordered):
        batch = ordered[position : position + size]
        try:
            records, tokens = score(batch, size)
        except (RuntimeError, MemoryError) as error:
            if size == 1 or not (isinstance(error, MemoryError) or is_out_of_memory(error)):
                raise
            size //= 2
            logger.warning("out of memory: batch size lowered to %d", size)
            _release_memory()
            continue
        write(records)
        position += len(batch)
        throughput.examples += len(batch)
        throughput.generated_tokens += tokens
        throughput.seconds = time.perf_counter() - started
        on_batch(throughput, len(batch))
    return throughput


def _release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def progress_display(
    total: int, label: str, enabled: bool
) -> Iterator[Callable[[Throughput, int], None]]:
    """A progress bar (on stderr) with examples/s and generated tokens/s; one line per batch
    when stderr is not a terminal (a log file)."""
    if not enabled:
        yield lambda throughput, advance: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        done = 0

        def log_line(throughput: Throughput, advance: int) -> None:
            nonlocal done
            done += advance
            console.print(f"{label}: {done}/{total} ({throughput.describe()})", highlight=False)

        yield log_line
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=console) as bar:
        task_id = bar.add_task(label, total=total, rate="")

        def update(throughput: Throughput, advance: int) -> None:
            bar.update(task_id, advance=advance, rate=throughput.describe())

        yield update


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while evaluating; a caller's model gets its mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# -- the entry point ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalResult:
    out_dir: Path
    n: int
    metrics: dict[str, float]
    counts: dict[str, int]
    resumed: int  # examples whose predictions were already in the folder
    throughput: dict[str, float]

    @property
    def predictions_path(self) -> Path:
        return self.out_dir / PREDICTIONS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / METRICS_FILE


def evaluate(
    model_ref: str | os.PathLike[str] | LoadedModel,
    task: str | None,
    split: str,
    out_dir: str | os.PathLike[str],
    *,
    task_options: dict[str, Any] | None = None,
    scoring: str = "generate",
    limit: int | None = None,
    random_subset: bool = False,
    seed: int = LM_EVAL_FEWSHOT_SEED,
    batch_size: int | None = None,
    dtype: str = "fp32",
    max_new_tokens: int | None = None,
    num_fewshot: int = 0,
    data_dir: str | None = None,
    adapter: str | os.PathLike[str] | None = None,
    chat_template: bool = False,
    allow_task_mismatch: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    roscoe: Any = None,
    answer_match: str = "seglm",
    trust_remote_code: bool = False,
) -> EvalResult:
    """Evaluate a model on ``split`` of ``task`` and write predictions and metrics to ``out_dir``.

    ``model_ref``: an alias, hub id or model folder (with ``adapter``, a PEFT adapter folder), a
    seglm run folder or one of its checkpoints, or a :class:`LoadedModel`. ``task`` None means
    the run folder's task (a run's task options are the defaults for that task). ``limit``: the
    first N examples, or N drawn with ``seed`` when ``random_subset``. ``seed`` also draws the
    ``num_fewshot`` exemplars (from the train split). ``batch_size`` None: 32 on CPU, 64 on GPU,
    halved on out-of-memory errors. Everything that can be checked is checked before the model
    is loaded; a rerun into ``out_dir`` resumes (or raises if the settings differ, unless
    ``overwrite``). ``roscoe`` (a ``seglm.metrics.roscoe.RoscoeConfig``) adds ROSCOE scores of
    each generated chain against its question to predictions.jsonl and metrics.json.
    ``answer_match`` ("seglm" or "lm-eval", gsm8k format only) is how exact match reads answers;
    it only scores, so a rerun with another one rescores the predictions already made.
    ``trust_remote_code`` runs custom model code (an ``auto_map``); nothing in a run folder,
    its ``config.yaml`` included, turns it on.
    """
    _check_arguments(scoring, limit, random_subset, batch_size, num_fewshot, max_new_tokens)
    from seglm.models import parse_dtype, resolve_dtype

    out = Path(out_dir)
    if isinstance(model_ref, LoadedModel):
        if adapter is not None:
            raise EvalError("adapter goes with a model name; apply it to a LoadedModel yourself")
        source, loaded, tokenizer = None, model_ref, model_ref.tokenizer
        run_config, model_name, adapter_name = loaded.run_config, loaded.name, loaded.adapter
        dtype = dtype_name(loaded.model)
    else:
        source = resolve_model(model_ref, adapter, trust_remote_code=trust_remote_code)
        loaded = None
        run_config, model_name, adapter_name = source.run_config, source.name, source.adapter
        parse_dtype(dtype)
        dtype = resolve_dtype(dtype)
        tokenizer = load_source_tokenizer(source)
    chosen = build_task(task, task_options, chat_template, tokenizer, run_config)
    check_task_fits(chosen, scoring, None if allow_task_mismatch else run_config, tokenizer)
    if scoring != "loglik":
        try:
            check_answer_match(answer_match, chosen.answer_format)
        except ValueError as error:
            raise EvalError(str(error)) from None
    examples = select_examples(chosen, split, data_dir, limit, random_subset, seed)
    if scoring != "loglik":
        check_references(chosen.answer_format, examples)
    pool = load_fewshot_pool(chosen, split, data_dir, num_fewshot)
    new_tokens = max_new_tokens or chosen.max_new_tokens
    settings = EvalSettings(
        model=model_name,
        adapter=adapter_name,
        task=chosen.name,
        task_options=resolved_options(chosen),
        split=chosen.resolve_split(split),
        scoring=scoring,
        num_fewshot=num_fewshot,
        seed=seed,
        max_new_tokens=None if scoring == "loglik" else new_tokens,
        dtype=dtype,
    )
    # Under a multi-process launch every rank generates its share of the examples into its own
    # file; rank 0 holds the folder (one evaluation writes it at a time), merges the shares and
    # scores them (seglm.distributed).
    ranks = current_ranks()
    with contextlib.ExitStack() as held:

        def prepare() -> None:
            if ranks.is_main:
                held.enter_context(output_lock(out))
                prepare_out_dir(out, settings, overwrite)

        together(ranks, prepare)
        done = read_done_predictions(out, scoring)
        pending = [example for example in examples if example.id not in done]
        share = pending[ranks.rank :: ranks.world]
        target = share_file(out, ranks) if ranks.distributed else out / PREDICTIONS_FILE
        throughput = Throughput()

        def run_share() -> None:
            nonlocal throughput, loaded
            if not share:
                return
            if loaded is None:
                assert source is not None
                loaded = load_source_model(source, tokenizer, dtype, ranks.device())
            requests = build_requests(chosen, share, tokenizer, scoring, pool, num_fewshot, seed)
            scorer = Scorer(loaded, chosen, scoring, new_tokens)
            size = batch_size or DEFAULT_BATCH_SIZES.get(scorer.device.type, FALLBACK_BATCH_SIZE)
            label = f"{chosen.name}/{settings.split}"
            if ranks.distributed:
                label += f" (rank 0's share of {ranks.world})"
            total = len(share) if ranks.distributed else len(examples)
            with (
                eval_mode(loaded.model),
                progress_display(total, label, progress and ranks.is_main) as update,
            ):
                update(throughput, total - len(share))
                throughput = run_batches(
                    requests, size, scorer, lambda records: append_records(target, records), update
                )

        together(ranks, run_share)
        throughput = Throughput.combined(gather(ranks, throughput))
        selection = {"limit": limit, "random_subset": random_subset}
        resumed = len(examples) - len(pending)

        def gather_and_score() -> EvalResult | None:
            if not ranks.is_main:
                return None
            merge_shares(out, scoring)
            return finish(
                out,
                settings,
                selection,
                examples,
                chosen.answer_format,
                throughput,
                resumed,
                roscoe,
                answer_match,
            )

        result = together(ranks, gather_and_score)
    return result if result is not None else read_result(out, resumed)


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


def read_result(out_dir: Path, resumed: int) -> EvalResult:
    """The result rank 0 wrote, for the other ranks."""
    summary = json.loads((out_dir / METRICS_FILE).read_text())
    return EvalResult(
        out_dir, summary["n"], summary["metrics"], summary["counts"], resumed,
        summary["throughput"],
    )  # fmt: skip


def _check_arguments(
    scoring: str,
    limit: int | None,
    random_subset: bool,
    batch_size: int | None,
    num_fewshot: int,
    max_new_tokens: int | None,
) -> None:
    check_choice("scoring", scoring, SCORINGS, EvalError)
    for name, value in (
        ("limit", limit),
        ("batch_size", batch_size),
        ("max_new_tokens", max_new_tokens),
    ):
        if value is not None and value < 1:
            raise EvalError(f"{name} must be >= 1; got {value}")
    if num_fewshot < 0:
        raise EvalError(f"num_fewshot must be >= 0; got {num_fewshot}")
    if random_subset and limit is None:
        raise EvalError("random_subset draws limit examples: give a limit")


def add_roscoe(records: list[dict[str, Any]], examples: Sequence[Example], config: Any) -> dict:
    """ROSCOE scores of each generated chain against its question, kept under ``roscoe`` in the
    record (computed once: a resumed evaluation scores only new records) and merged into its
    metrics. Returns the models used and the families skipped, for metrics.json."""
    from seglm.metrics.roscoe import add_roscoe_scores

    sources = {example.id: example.source for example in examples}
    todo = [record for record in records if "roscoe" not in record]
    notes: dict[str, Any] = {"scores": list(config.scores)}
    if todo:
        rows = [{"source": sources[r["id"]], "prediction": r["prediction"]} for r in todo]
        result = add_roscoe_scores(rows, config)
        for record, row in zip(todo, rows, strict=True):
            record["roscoe"] = {name: row[name] for name in config.scores}
        notes.update(models=result.models, skipped=[s.message for s in result.skipped])
    for record in records:
        record["metrics"].update(record["roscoe"])
    return notes


def finish(
    out_dir: Path,
    settings: EvalSettings,
    selection: dict[str, Any],
    examples: Sequence[Example],
    answer_format: str,
    throughput: Throughput,
    resumed: int,
    roscoe: Any = None,
    answer_match: str = "seglm",
    trust_remote_code: bool = False,
) -> EvalResult:
    """Recompute every example's metrics from the predictions file, rewrite it in dataset order
    and write metrics.json."""
    path = out_dir / PREDICTIONS_FILE
    records = read_predictions(path, settings.scoring)
    missing = [example.id for example in examples if example.id not in records]
    if missing:
        raise EvalError(f"{path} lacks {len(missing)} predictions (first: {missing[0]})")
    chosen = [records.pop(example.id) for example in examples]
    for record in chosen:
        record["metrics"] = example_metrics(answer_format, settings.scoring, record, answer_match)
    roscoe_notes = None
    if roscoe is not None and settings.scoring != "loglik":
        roscoe_notes = add_roscoe(chosen, examples, roscoe)
    if records:
        logger.warning(
            "%s: %d predictions are not in this selection (another limit or subset); "
            "kept at the end of the file, not scored",
            path,
            len(records),
        )
    lines = [*chosen, *records.values()]
    write_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    per_example = [record["metrics"] for record in chosen]
    metrics, counts = aggregate(per_example), count_scored(per_example)
    summary: dict[str, Any] = {
        **settings.to_dict(),
        **selection,
        "n": len(chosen),
        "metrics": metrics,
        "counts": counts,
    }
    if settings.scoring != "loglik":
        summary["answer_match"] = answer_match
        summary["finish"] = dict(Counter(record.get("finish", "unknown") for record in chosen))
    summary["unscored_predictions"] = len(records)
    summary["throughput"] = throughput.to_dict()
    if roscoe_notes is not None:
        summary["roscoe"] = roscoe_notes
    write_atomically(out_dir / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
    return EvalResult(out_dir, len(chosen), metrics, counts, resumed, throughput.to_dict())
