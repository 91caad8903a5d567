"""``evaluate(model_ref, task, split, out_dir, config=EvalConfig(...)) -> EvalResult``: score a
model, a model plus a LoRA adapter, or a seglm run folder on a task split.

The output folder holds:

- ``eval_config.json``: the settings that define the evaluation
  (:meth:`seglm.config.EvalConfig.identity`); a rerun into the folder must have the same ones;
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
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from seglm.config import EVAL_FIELDS, SCORINGS, ConfigError, EvalConfig
from seglm.distributed import Ranks, current_ranks, gather, together
from seglm.evaluate.batches import Throughput, eval_mode, progress_display, run_batches
from seglm.evaluate.common import DEFAULT_BATCH_SIZES, FALLBACK_BATCH_SIZE, EvalError
from seglm.evaluate.files import (
    append_records,
    merge_shares,
    output_lock,
    prepare_out_dir,
    read_done_predictions,
    read_predictions,
    share_file,
)
from seglm.evaluate.model_source import (
    LoadedModel,
    ModelSource,
    check_vocabulary,
    dtype_name,
    load_for_eval,
    load_source_model,
    load_source_tokenizer,
    resolve_model,
    run_source,
)
from seglm.evaluate.requests import (
    Request,
    build_requests,
    build_task,
    check_references,
    check_task_fits,
    encode_pairs,
    load_fewshot_pool,
    resolved_options,
    select_examples,
)
from seglm.evaluate.scorer import Generation, Scorer, cut_at_stop, example_metrics, loglik_metrics
from seglm.metrics import aggregate, count_scored
from seglm.metrics.exact_match import check_answer_match
from seglm.runs import METRICS_FILE, PREDICTIONS_FILE, write_atomically
from seglm.schema import check_keys
from seglm.tasks import Example, Task

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
    model_ref: str | os.PathLike[str] | ModelSource | LoadedModel,
    task: str | None = None,
    split: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    config: EvalConfig | None = None,
    progress: bool = True,
    **settings: Any,
) -> EvalResult:
    """Evaluate a model on ``split`` of ``task`` and write predictions and metrics to ``out_dir``.

    ``model_ref``: an alias, hub id or model folder (with the ``adapter`` setting, a PEFT adapter
    folder), a seglm run folder or one of its checkpoints, a :class:`ModelSource`, or a
    :class:`LoadedModel`. How: ``config`` (a :class:`~seglm.config.EvalConfig`), with
    ``settings`` (its fields by name: ``limit=10``) and ``task`` and ``split`` over it. ``task``
    None means the run folder's task (a run's task options are the defaults for that task).
    ``limit``: the first N examples, or N drawn with ``seed`` when ``random_subset``. ``seed``
    also draws the ``num_fewshot`` exemplars (from the train split). ``batch_size`` None: 32 on
    CPU, 64 on GPU, halved on out-of-memory errors. ``roscoe`` adds ROSCOE scores of each
    generated chain against its question to predictions.jsonl and metrics.json (True, or a
    ``seglm.metrics.roscoe.RoscoeConfig`` that also picks the models). ``answer_match``
    ("seglm" or "lm-eval", gsm8k format only) is how exact match reads answers; it only
    scores, so a rerun with another one rescores the predictions already made.
    ``trust_remote_code`` runs custom model code (an ``auto_map``); nothing in a run folder,
    its ``config.yaml`` included, turns it on.

    Everything that can be checked is checked before the model is loaded (bad settings raise
    :class:`~seglm.config.ConfigError`, the rest :class:`EvalError`); a rerun into ``out_dir``
    resumes (or raises if the settings differ, unless ``overwrite``). Under a multi-process
    launch every rank generates its share of the examples into its own file; rank 0 holds the
    folder (one evaluation writes it at a time), merges the shares and scores them.
    """
    if out_dir is None:
        raise EvalError("evaluate needs out_dir: the folder for predictions.jsonl and metrics.json")
    out, ranks = Path(out_dir), current_ranks()
    config, roscoe = _settings(config, task, split, settings)
    job = prepare(model_ref, config, roscoe)
    with contextlib.ExitStack() as held:
        # 1. Lock: rank 0 holds the folder and checks that it holds this evaluation.
        on_main(ranks, lambda: hold_folder(held, out, job.identity, config.overwrite, ranks.world))
        # 2. Pending: the examples without a prediction in the folder.
        done = read_done_predictions(out, config.scoring)
        pending = [example for example in job.examples if example.id not in done]
        # 3. This rank's share, generated or scored into its own file.
        share = pending[ranks.rank :: ranks.world]
        throughput = together(ranks, lambda: score_share(job, share, out, ranks, progress))
        throughput = Throughput.combined(gather(ranks, throughput))
        # 4. Merge the ranks' shares into the predictions file.
        on_main(ranks, lambda: merge_shares(out, config.scoring))
        # 5. Finish: every example's metrics from the predictions file, metrics.json.
        resumed = len(job.examples) - len(pending)
        result = on_main(ranks, lambda: finish(out, job, throughput, resumed))
    return result if result is not None else read_result(out, resumed)


def _settings(
    config: EvalConfig | None, task: str | None, split: str | None, settings: dict[str, Any]
) -> tuple[EvalConfig, Any]:
    """The EvalConfig that ``evaluate``'s arguments give (None: not given), and the ROSCOE
    scorer's settings when ``roscoe`` is a RoscoeConfig (which picks the models too)."""
    roscoe = settings.get("roscoe")
    scorer = None if roscoe is None or isinstance(roscoe, bool) else roscoe
    if scorer is not None:
        settings = {**settings, "roscoe": True, "roscoe_families": list(scorer.families)}
    given = {"task": task, "split": split, **settings}
    check_keys(given, EVAL_FIELDS, "evaluate")
    config = dataclasses.replace(
        config or EvalConfig(), **{key: value for key, value in given.items() if value is not None}
    )
    return config, scorer


def on_main(ranks: Ranks, step: Callable[[], T]) -> T | None:
    """``step`` on rank 0, the other ranks waiting to learn whether it succeeded."""
    return together(ranks, lambda: step() if ranks.is_main else None)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation, checked and resolved before its model loads: ``config`` with the task's
    name, options and split as the task resolves them, the dtype and generation length used."""

    config: EvalConfig
    identity: dict[str, Any]  # eval_config.json
    source: ModelSource | None  # where the model comes from, unless it is loaded already
    loaded: LoadedModel | None
    tokenizer: Any
    task: Task
    examples: list[Example]
    fewshot_pool: list[Example]
    roscoe: Any  # seglm.metrics.roscoe.RoscoeConfig, or None

    @property
    def new_tokens(self) -> int:
        return self.config.max_new_tokens or self.task.max_new_tokens


def prepare(
    model_ref: str | os.PathLike[str] | ModelSource | LoadedModel,
    config: EvalConfig,
    roscoe: Any = None,
) -> Evaluation:
    """Check everything that can be checked without the model's weights."""
    from seglm.models import resolve_dtype

    source: ModelSource | None = None
    if isinstance(model_ref, LoadedModel):
        if config.adapter is not None:
            raise EvalError("adapter goes with a model name; apply it to a LoadedModel yourself")
        loaded, tokenizer, dtype = model_ref, model_ref.tokenizer, dtype_name(model_ref.model)
        model_name, adapter, run_config = loaded.name, loaded.adapter, loaded.run_config
    else:
        source = model_ref if isinstance(model_ref, ModelSource) else resolve_model(
            model_ref, config.adapter, trust_remote_code=config.trust_remote_code
        )  # fmt: skip
        loaded, tokenizer, dtype = None, load_source_tokenizer(source), resolve_dtype(config.dtype)
        model_name, adapter, run_config = source.name, source.adapter, source.run_config
    task = build_task(config.task, config.task_options, config.chat_template, tokenizer, run_config)
    check_task_fits(
        task, config.scoring, None if config.allow_task_mismatch else run_config, tokenizer
    )
    if config.scoring != "loglik":
        try:
            check_answer_match(config.answer_match, task.answer_format)
        except ValueError as error:
            raise EvalError(str(error)) from None
    examples = select_examples(
        task, config.split, config.data_dir, config.limit, config.random_subset, config.seed
    )
    if config.scoring != "loglik":
        check_references(task.answer_format, examples)
    pool = load_fewshot_pool(task, config.split, config.data_dir, config.num_fewshot)
    new_tokens = config.max_new_tokens or task.max_new_tokens
    resolved = dataclasses.replace(
        config,
        task=task.name,
        task_options=resolved_options(task),
        split=task.resolve_split(config.split),
        max_new_tokens=None if config.scoring == "loglik" else new_tokens,
        dtype=dtype,
    )
    return Evaluation(
        config=resolved,
        identity=resolved.identity(model_name, adapter),
        source=source,
        loaded=loaded,
        tokenizer=tokenizer,
        task=task,
        examples=examples,
        fewshot_pool=pool,
        roscoe=roscoe or _roscoe_config(config),
    )


def _roscoe_config(config: EvalConfig) -> Any:
    """The ROSCOE scorer's settings for ``config.roscoe_families``, or None without roscoe."""
    if not config.roscoe:
        return None
    from seglm.metrics.roscoe import FAMILIES, RoscoeConfig

    return RoscoeConfig(families=config.roscoe_families or FAMILIES)


def hold_folder(
    held: contextlib.ExitStack,
    out_dir: Path,
    identity: dict[str, Any],
    overwrite: bool,
    world: int = 1,
) -> None:
    """Lock the output folder for this evaluation (until ``held`` closes); create it, or check
    that it holds this evaluation, to resume it (``world``: the processes writing shares)."""
    held.enter_context(output_lock(out_dir))
    prepare_out_dir(out_dir, identity, overwrite, world)


def score_share(
    job: Evaluation, share: Sequence[Example], out_dir: Path, ranks: Ranks, progress: bool
) -> Throughput:
    """Generate or score this rank's share of the examples, appending their records to the
    predictions file (to the rank's own file under a multi-process launch)."""
    if not share:
        return Throughput()
    config = job.config
    loaded = job.loaded
    if loaded is None:
        assert job.source is not None
        loaded = load_source_model(job.source, job.tokenizer, config.dtype, ranks.device())
    requests = build_requests(
        job.task, share, job.tokenizer, config.scoring, job.fewshot_pool, config.num_fewshot,
        config.seed,
    )  # fmt: skip
    scorer = Scorer(loaded, job.task, config.scoring, job.new_tokens)
    size = config.batch_size or DEFAULT_BATCH_SIZES.get(scorer.device.type, FALLBACK_BATCH_SIZE)
    target = share_file(out_dir, ranks) if ranks.distributed else out_dir / PREDICTIONS_FILE
    label = f"{job.task.name}/{config.split}"
    if ranks.distributed:
        label += f" (rank 0's share of {ranks.world})"
    total = len(share) if ranks.distributed else len(job.examples)
    with (
        eval_mode(loaded.model),
        progress_display(total, label, progress and ranks.is_main) as update,
    ):
        update(Throughput(), total - len(share))
        return run_batches(
            requests, size, scorer, lambda records: append_records(target, records), update
        )


def read_result(out_dir: Path, resumed: int) -> EvalResult:
    """The result rank 0 wrote, for the other ranks."""
    summary = json.loads((out_dir / METRICS_FILE).read_text())
    return EvalResult(
        out_dir, summary["n"], summary["metrics"], summary["counts"], resumed,
        summary["throughput"],
    )  # fmt: skip


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


def finish(out_dir: Path, job: Evaluation, throughput: Throughput, resumed: int) -> EvalResult:
    """Recompute every example's metrics from the predictions file, rewrite it in dataset order
    and write metrics.json."""
    config, examples = job.config, job.examples
    path = out_dir / PREDICTIONS_FILE
    records = read_predictions(path, config.scoring)
    missing = [example.id for example in examples if example.id not in records]
    if missing:
        raise EvalError(f"{path} lacks {len(missing)} predictions (first: {missing[0]})")
    chosen = [records.pop(example.id) for example in examples]
    for record in chosen:
        record["metrics"] = example_metrics(
            job.task.answer_format, config.scoring, record, config.answer_match
        )
    roscoe_notes = None
    if job.roscoe is not None and config.scoring != "loglik":
        roscoe_notes = add_roscoe(chosen, examples, job.roscoe)
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
        **job.identity,
        "limit": config.limit,
        "random_subset": config.random_subset,
        "n": len(chosen),
        "metrics": metrics,
        "counts": counts,
    }
    if config.scoring != "loglik":
        summary["answer_match"] = config.answer_match
        summary["finish"] = dict(Counter(record.get("finish", "unknown") for record in chosen))
    summary["unscored_predictions"] = len(records)
    summary["throughput"] = throughput.to_dict()
    if roscoe_notes is not None:
        summary["roscoe"] = roscoe_notes
    write_atomically(out_dir / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
    return EvalResult(out_dir, len(chosen), metrics, counts, resumed, throughput.to_dict())


__all__ = [
    "SCORINGS",
    "ConfigError",
    "EvalConfig",
    "EvalError",
    "EvalResult",
    "Evaluation",
    "Example",
    "Generation",
    "LoadedModel",
    "ModelSource",
    "Request",
    "Scorer",
    "Throughput",
    "append_records",
    "build_requests",
    "check_vocabulary",
    "cut_at_stop",
    "encode_pairs",
    "evaluate",
    "load_for_eval",
    "loglik_metrics",
    "output_lock",
    "read_predictions",
    "resolve_model",
    "run_batches",
    "run_source",
]
