"""The training data: the train and evaluation splits of the task, loaded and tokenised, and
what tokenisation kept, dropped and truncated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seglm.config import AUTO, ConfigError, TrainConfig
from seglm.train.checks import build_objective, check_selection_split

EVAL_SPLITS: tuple[str, ...] = ("validation", "dev", "val")


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] | None
    report: dict[str, Any]


def prepare_data(config: TrainConfig, tokenizer: Any) -> PreparedData:
    """Load and tokenise the train and eval splits; fail if nothing is left to train on."""
    from seglm.data import tokenize_examples
    from seglm.tasks import get_task

    try:
        task = get_task(config.task, tokenizer=tokenizer, **config.task_options)
    except ValueError as error:
        raise ConfigError(f"task_options: {error}") from None
    eval_split = _eval_split(config, task.splits)
    check_selection_split(config, task, eval_split)
    max_length = config.max_length or task.default_max_length
    report: dict[str, Any] = {"max_length": max_length}
    features: dict[str, list[dict[str, Any]]] = {}
    for name, split, limit in (
        ("train", config.train_split, config.train_limit),
        ("eval", eval_split, config.eval_limit),
    ):
        if split is None:
            continue
        examples = _load_split(task, split, config, limit)
        tokenized = tokenize_examples(
            examples,
            tokenizer,
            max_length,
            # The prompt's labels are kept when some term averages over every supervised token.
            ce_scope=build_objective(config).label_scope,
            overflow=config.overflow,
        )
        if not tokenized.features:
            counts = tokenized.report
            raise ConfigError(
                f"task {config.task!r}, split {split!r}: every one of {len(examples)} examples "
                f"was dropped by tokenisation at max_length={max_length} (answer too long: "
                f"{counts['dropped_answer_too_long']}, prompt too long with overflow "
                f"{config.overflow!r}: {counts['dropped_prompt_too_long']}, prompt template too "
                f"long to fit by cutting its question: {counts['dropped_prompt_uncuttable']}); "
                "raise max_length"
            )
        features[name] = tokenized.features
        report[name] = {"split": split, "holds": task.describe_split(split), **tokenized.report}
    return PreparedData(features["train"], features.get("eval"), report)


def _eval_split(config: TrainConfig, splits: Sequence[str]) -> str | None:
    if config.eval_split != AUTO:
        return config.eval_split
    return next((s for s in EVAL_SPLITS if s in splits and s != config.train_split), None)


def _load_split(task: Any, split: str, config: TrainConfig, limit: int | None) -> list[Any]:
    try:
        examples = task.load(split, data_dir=config.data_dir, limit=limit)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"task {config.task!r}, split {split!r}: {error}") from None
    if not examples:
        raise ConfigError(f"task {config.task!r}, split {split!r} has no examples")
    return examples
