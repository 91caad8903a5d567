"""Examples -> token ids, labels and answer masks; and the collator that pads them.

Each example becomes ``prompt ids + target ids + [EOS]``. The prompt and the target are
tokenised *separately* and the ids concatenated: tokenising the joined text would let a BPE merge
straddle the boundary (``"Answer: "`` + ``"<<48"`` becomes ``Answer`` ``:`` `` <<`` ``48`` instead
of ``Answer`` ``:`` `` `` ``<<`` ``48``), so training would see a prompt that generation, which
tokenises the prompt alone, never shows the model. Separately, the split is exact and stable.

- ``labels`` are the ids on the cross-entropy scope and -100 elsewhere: prompt + answer + EOS for
  ``ce_scope="all"`` (the paper's language-modelling loss), answer + EOS for ``"answer"``.
  They are not shifted (the objective shifts).
- ``answer_mask`` is 1 on the answer tokens, final EOS included (where the segmentation losses
  apply). EOS is labelled from the lengths, never from pad ids, so it is trained when pad = EOS.
- The answer is never cut. An example whose answer + EOS plus ``min_prompt_tokens`` of prompt
  exceeds ``max_length`` is dropped. Otherwise an over-long prompt loses the start of its
  question (``overflow="truncate_prompt"``), or the example is dropped (``overflow="drop"``).
  Only the question text (``Example.source``, the example's variable part) is cut, at a word
  boundary where it has one: the template around it (``Question:``, the choices, ``Answer:``, a
  chat header) and the tokenizer's BOS stay whole, and the cut prompt is tokenised as one text,
  as generation would tokenise it. A prompt that cannot fit that way (the template and answer
  alone are too long, or the prompt does not contain its question) is dropped. The report counts
  each case and the prompt tokens cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from seglm.choices import check_choice
from seglm.config import OVERFLOWS as OVERFLOW_POLICIES
from seglm.losses import CE_SCOPES
from seglm.tasks.base import Example

IGNORE_INDEX = -100
PAD_VALUES = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX, "answer_mask": 0}


@dataclass
class TokenizedData:
    """Features (one dict of int lists per kept example), the report, and for each feature the
    index of its example in the input list."""

    features: list[dict[str, list[int]]]
    report: dict[str, Any]
    indices: list[int] = field(default_factory=list)


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    max_length: int,
    ce_scope: str = "all",
    overflow: str = "truncate_prompt",
    min_prompt_tokens: int = 8,
) -> TokenizedData:
    """Tokenise examples for training; see the module docstring for the policies."""
    check_choice("ce_scope", ce_scope, CE_SCOPES)
    check_choice("overflow", overflow, OVERFLOW_POLICIES)
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2; got {max_length}")
    if min_prompt_tokens < 1:
        raise ValueError(f"min_prompt_tokens must be at least 1; got {min_prompt_tokens}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "the tokenizer has no EOS token; seglm trains EOS so that generation stops"
        )

    prompts = encode_prompts(tokenizer, [example.prompt for example in examples])
    targets = encode_texts(tokenizer, [example.target for example in examples])
    answers = [[*ids, eos] for ids in targets]

    counts = {
        "answer_too_long": 0,
        "prompt_too_long": 0,
        "prompt_uncuttable": 0,
        "truncated": 0,
        "truncated_tokens": 0,
    }
    features, indices = [], []
    for index, (example, (prompt, kept_prefix), answer) in enumerate(
        zip(examples, prompts, answers, strict=True)
    ):
        fitted = fit_prompt(
            prompt, kept_prefix, len(answer), max_length, overflow, min_prompt_tokens, counts
        )
        if fitted is TRUNCATE:
            fitted = cut_question(tokenizer, example, max_length - len(answer))
            if fitted is None:
                counts["prompt_uncuttable"] += 1
            else:
                counts["truncated"] += 1
                counts["truncated_tokens"] += len(prompt) - len(fitted)
        if isinstance(fitted, list):
            features.append(build_features(fitted, answer, ce_scope))
            indices.append(index)

    lengths = {
        "prompt": [len(prompt) for prompt, _ in prompts],
        "answer": [len(answer) for answer in answers],
    }
    lengths["total"] = [p + a for p, a in zip(lengths["prompt"], lengths["answer"], strict=True)]
    report = {
        "examples": len(examples),
        "kept": len(features),
        "dropped": counts["answer_too_long"]
        + counts["prompt_too_long"]
        + counts["prompt_uncuttable"],
        "dropped_answer_too_long": counts["answer_too_long"],
        "dropped_prompt_too_long": counts["prompt_too_long"],
        "dropped_prompt_uncuttable": counts["prompt_uncuttable"],
        "truncated": counts["truncated"],
        "truncated_tokens": counts["truncated_tokens"],
        "max_length": max_length,
        "ce_scope": ce_scope,
        "overflow": overflow,
        "tokens": {name: length_stats(values) for name, values in lengths.items()},
    }
    return TokenizedData(features, report, indices)


def encode_prompts(tokenizer: Any, prompts: list[str]) -> list[tuple[list[int], int]]:
    """Prompt ids with the tokenizer's leading special tokens (BOS), and how many there are.

    A prompt rendered by a chat template may already begin with the BOS text; it is then not
    added twice.
    """
    prefix = leading_special_ids(tokenizer)
    bos_text = tokenizer.bos_token if prefix else None
    encoded = encode_texts(tokenizer, prompts)
    result = []
    for text, ids in zip(prompts, encoded, strict=True):
        if prefix and not (bos_text and text.startswith(bos_text)):
            result.append(([*prefix, *ids], len(prefix)))
        else:
            result.append((list(ids), 0))
    return result


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (one batched call)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text (e.g. Llama's BOS; none for SmolLM2)."""
    with_specials = tokenizer("x")["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return list(with_specials[:start])
    return []


TRUNCATE = "truncate"  # fit_prompt's verdict: the prompt fits only with its question cut


def fit_prompt(
    prompt: list[int],
    kept_prefix: int,
    answer_length: int,
    max_length: int,
    overflow: str,
    min_prompt_tokens: int,
    counts: dict[str, int],
) -> list[int] | str | None:
    """The prompt when it fits beside the whole answer, ``TRUNCATE`` when it must be cut, or
    None (and a count) when the example is dropped."""
    minimum = min(len(prompt), max(min_prompt_tokens, kept_prefix + 1))
    if answer_length + minimum > max_length:
        counts["answer_too_long"] += 1
        return None
    if len(prompt) + answer_length <= max_length:
        return prompt
    if overflow == "drop":
        counts["prompt_too_long"] += 1
        return None
    return TRUNCATE


def cut_question(tokenizer: Any, example: Example, budget: int) -> list[int] | None:
    """The ids of the prompt with the fewest leading characters of its question removed that
    fits in ``budget`` tokens (moved on to the next word start, if there is one, so no word is
    cut); None when even the question's last character leaves the prompt too long, or the
    prompt does not contain ``example.source``."""
    start = example.prompt.find(example.source) if example.source else -1
    if start < 0:
        return None
    head, question = example.prompt[:start], example.source
    tail = example.prompt[start + len(question) :]

    def encoded(cut: int) -> list[int]:
        ids, _ = encode_prompts(tokenizer, [head + question[cut:] + tail])[0]
        return ids

    # Binary search for the smallest cut that fits (fewer characters never need more tokens).
    low, high = 0, len(question) - 1
    if len(encoded(high)) > budget:
        return None
    while low < high:
        middle = (low + high) // 2
        if len(encoded(middle)) <= budget:
            high = middle
        else:
            low = middle + 1
    word_start = next(
        (i for i in range(low, len(question)) if i > 0 and question[i - 1].isspace()
         and not question[i].isspace()),
        None,
    )  # fmt: skip
    if word_start is not None and len(ids := encoded(word_start)) <= budget:
        return ids
    return encoded(low)


def build_features(prompt: list[int], answer: list[int], ce_scope: str) -> dict[str, list[int]]:
    input_ids = prompt + answer
    prompt_labels = prompt if ce_scope == "all" else [IGNORE_INDEX] * len(prompt)
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [*prompt_labels, *answer],
        "answer_mask": [0] * len(prompt) + [1] * len(answer),
    }


def length_stats(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": round(percentile(ordered, 50), 2),
        "p95": round(percentile(ordered, 95), 2),
        "max": ordered[-1],
    }


def percentile(ordered: list[int], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of sorted values."""
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class DataCollator:
    """Pads features to the longest in the batch: input_ids with ``pad_token_id``,
    attention_mask and answer_mask with 0, labels with -100. Returns int64 tensors.

    With the transformers Trainer, keep ``answer_mask`` in the batch by setting
    ``remove_unused_columns=False`` (otherwise the Trainer drops keys the model's ``forward``
    does not take); the Trainer subclass pops it before calling the model.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left'; got {self.padding_side!r}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1; got {self.pad_to_multiple_of}")

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        keys = list(features[0])
        unknown = [key for key in keys if key not in PAD_VALUES]
        if "input_ids" not in keys or unknown:
            raise ValueError(
                f"features must hold input_ids and only {', '.join(PAD_VALUES)}; got {keys}"
            )
        width = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {}
        for key in keys:
            value = self.pad_token_id if key == "input_ids" else PAD_VALUES[key]
            rows = [self.pad(list(feature[key]), width, value) for feature in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch

    def pad(self, row: list[int], width: int, value: int) -> list[int]:
        padding = [value] * (width - len(row))
        return row + padding if self.padding_side == "right" else padding + row
