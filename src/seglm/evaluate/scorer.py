"""Scoring a batch: greedy generation with stop strings, and log-likelihoods of choices with
a shared KV cache."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seglm.evaluate.model_source import LoadedModel
from seglm.evaluate.requests import Request
from seglm.metrics import (
    score_prediction,
)
from seglm.tasks import Task
from seglm.tasks.base import LETTERS


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
                rest = self.continuation_logprobs(pairs, rows, mask, output_cache(prefix), width)
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
            use_cache=False,
            **{cache_keyword(self.model): cache},
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


def cache_keyword(model: Any) -> str:
    """The forward argument that takes a KV cache: ``cache`` from transformers 5.x on
    (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned, under either name."""
    cache = output.get("cache")  # reading past_key_values on 5.x warns that it is deprecated
    return cache if cache is not None else output.past_key_values
