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
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seglm.choices import check_choice
from seglm.distributed import current_ranks, gather, together
from seglm.evaluate.batches import Throughput, eval_mode, progress_display, run_batches
from seglm.evaluate.common import (
    DEFAULT_BATCH_SIZES,
    FALLBACK_BATCH_SIZE,
    LM_EVAL_FEWSHOT_SEED,
    SCORINGS,
    EvalError,
)
from seglm.evaluate.files import (
    EvalSettings,
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
from seglm.metrics import (
    aggregate,
    count_scored,
)
from seglm.metrics.exact_match import check_answer_match
from seglm.runs import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    write_atomically,
)
from seglm.tasks import Example

logger = logging.getLogger(__name__)


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


__all__ = [
    "SCORINGS",
    "EvalError",
    "EvalResult",
    "EvalSettings",
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
]
