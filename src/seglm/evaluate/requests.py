"""Tasks, examples and prompts: the requests to generate or score, few-shot exemplars."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seglm.config import TrainConfig
from seglm.evaluate.common import CHOICE_DELIMITER, FEWSHOT_DELIMITER, FEWSHOT_SPLIT, EvalError
from seglm.metrics import (
    ANSWER_FORMATS,
)
from seglm.metrics.exact_match import reference_answer
from seglm.tasks import Example, Task, get_task


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
