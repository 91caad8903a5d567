"""ROSCOE reasoning-chain scores (Golovneva et al., ICLR 2023), with the paper's formulas.

A chain (the model's output, the *hypothesis*) is split into steps h_1..h_N and the question (the
*source*) into sentences s_1..s_K. With cos_s(a, b) = (1 + cos(a, b)) / 2 and
align(x -> Y) = max_y cos_s(x, y), every score lies in [0, 1], higher is better. docs/roscoe.md
gives the formulas, the models, and where ROSCOE's reference code computes something else.

Usage: ``RoscoeScorer(RoscoeConfig()).score([{"source": question, "hypothesis": chain}, ...])``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from rich.progress import Progress

from seglm.schema import Count, Integer, Text, check_fields, choices, optional

from .roscoe_models import (
    ROSCOE_GRAMMAR_MODEL,
    ROSCOE_NLI_MODEL,
    ContradictionModel,
    RoscoeModels,
    load_models,
)
from .roscoe_names import FAMILIES, SCORE_NAMES, SCORES_BY_FAMILY
from .steps import FORMULA

logger = logging.getLogger(__name__)

ROLES_BY_SCORE: dict[str, tuple[str, ...]] = {
    "faithfulness_step": ("sentence",),
    "faithfulness_token": ("sentence", "token"),
    "info_step": ("sentence",),
    "repetition_token": ("token",),
    "info_chain": ("sentence",),
    "repetition_step": ("sentence",),
    "self_consistency": ("nli",),
    "source_consistency": ("nli",),
    "perplexity_step": ("perplexity",),
    "perplexity_chain": ("perplexity",),
    "grammar_step": ("grammar",),
}
# Examples are scored this many at a time (the progress bar moves per chunk). Token embeddings
# (a matrix per text) are dropped after a chunk once this many texts are cached, so memory stays
# flat on long runs (4096 texts x ~30 tokens x 768 floats ~ 0.4 GB).
_CHUNK = 64
_MAX_CACHED_TOKEN_TEXTS = 4096


@dataclass(frozen=True)
class RoscoeConfig:
    """What to score and with which models. A model is a hub id, a local folder, or an alias
    (``all-MiniLM-L6-v2``, ``smollm2-135m-instruct``); None means ROSCOE's own model when it can
    be loaded, else the offline stand-in (docs/roscoe.md, "Models")."""

    families: choices(FAMILIES, tuple) = FAMILIES
    sentence_model: optional(Text) = None
    token_model: optional(Text) = None  # None: roberta-base for ROSCOE's, else sentence_model
    nli_model: Text = ROSCOE_NLI_MODEL
    perplexity_model: optional(Text) = None
    grammar_model: Text = ROSCOE_GRAMMAR_MODEL
    nli_contradiction_label: optional(Integer | Text) = None  # None: the label "contradiction"
    grammar_acceptable_label: optional(Integer | Text) = None  # None: a label named "acceptable"
    batch_size: Count = 32
    lm_batch_size: Count = 8  # a perplexity batch holds batch x tokens x vocabulary logits
    max_length: Count = 512  # tokens per text, for every model
    device: optional(Text) = None  # None: cuda when available, else cpu
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self, noun="RoscoeConfig field")

    @property
    def scores(self) -> tuple[str, ...]:
        return tuple(name for family in self.families for name in SCORES_BY_FAMILY[family])


# --- steps -------------------------------------------------------------------------------------

_ANSWER_MARKER = "####"
# A sentence ends at . ! or ? (and closing quotes or brackets) followed by white space.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+")
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e"}
)


def _has_content(text: str) -> bool:
    return any(character.isalnum() for character in text)


def _ends_with_abbreviation(text: str) -> bool:
    words = text.split()
    return bool(words) and words[-1].lstrip("([\"'").lower() in _ABBREVIATIONS


def _sentences_in_line(line: str) -> list[str]:
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(line):
        following = line[match.end() : match.end() + 1]
        if following.islower() or _ends_with_abbreviation(line[start : match.start()]):
            continue
        sentences.append(line[start : match.end()].strip())
        start = match.end()
    sentences.append(line[start:].strip())
    return [sentence for sentence in sentences if _has_content(sentence)]


def split_sentences(text: str) -> list[str]:
    """Sentences of every line of ``text`` (the source side of ROSCOE)."""
    return [sentence for line in text.splitlines() for sentence in _sentences_in_line(line)]


def _line_steps(line: str) -> list[str]:
    prose = FORMULA.sub("", line)
    if _has_content(prose):
        # "48/2 = <<48/2=24>>24 clips": the calculator annotation repeats the prose around it.
        return _sentences_in_line(prose)
    return [formula.strip() for formula in FORMULA.findall(line) if _has_content(formula)]


def split_steps(chain: str) -> list[str]:
    """Reasoning steps of a chain: its sentences, line by line, with calculator annotations
    ``<<...>>`` removed from prose; a line of annotations only gives one step per formula, and
    the final answer ``#### N`` is a step of its own."""
    steps = []
    for line in chain.splitlines():
        body, marker, answer = line.partition(_ANSWER_MARKER)
        steps.extend(_line_steps(body))
        if marker and _has_content(answer):
            steps.append(f"{_ANSWER_MARKER} {answer.strip()}")
    return steps


# --- formulas (paper section 4; docs/roscoe.md) ----------------------------------------------


def scaled_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos_s = (1 + cos) / 2 between every row of ``a`` and every row of ``b``: [len(a), len(b)]."""
    a_unit = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b_unit = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (1.0 + a_unit @ b_unit.T) / 2.0


def alignment(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """align(x_i -> y) = max_j cos_s(x_i, y_j), for every row x_i of ``x``."""
    return scaled_cosine(x, y).max(axis=1)


def faithfulness_step(steps: np.ndarray, source: np.ndarray) -> float:
    """(1/N) sum_i align(h_i -> s)."""
    return float(alignment(steps, source).mean())


def faithfulness_token(
    steps: np.ndarray,
    source: np.ndarray,
    step_tokens: Sequence[np.ndarray],
    source_tokens: Sequence[np.ndarray],
) -> float:
    """[sum_i align(h_i -> s) + sum_ij align(h_ij -> s tokens)] / (N + M), M = hypothesis tokens."""
    step_alignments = alignment(steps, source)
    token_alignments = alignment(np.concatenate(step_tokens), np.concatenate(source_tokens))
    total = step_alignments.sum() + token_alignments.sum()
    return float(total / (len(step_alignments) + len(token_alignments)))


def info_step(steps: np.ndarray, source: np.ndarray) -> float:
    """½ [(1/N) sum_i align(h_i -> s) + (1/K) sum_j align(s_j -> h)]."""
    return float((alignment(steps, source).mean() + alignment(source, steps).mean()) / 2.0)


def repetition_token(step_tokens: Sequence[np.ndarray]) -> float:
    """1 - max_{i>j} mean_t align(h_it -> tokens of h_j); 1 when no two steps have tokens."""
    similarities = [
        alignment(step_tokens[i], step_tokens[j]).mean()
        for i in range(1, len(step_tokens))
        for j in range(i)
        if len(step_tokens[i]) and len(step_tokens[j])
    ]
    return 1.0 - float(max(similarities)) if similarities else 1.0


def info_chain(chain: np.ndarray, source: np.ndarray) -> float:
    """cos_s(embedding of the whole chain, embedding of the whole source)."""
    return float(scaled_cosine(chain[None, :], source[None, :])[0, 0])


def repetition_step(steps: np.ndarray) -> float:
    """1 - max_{i>j} cos_s(h_i, h_j); 1 for a single step."""
    if len(steps) < 2:
        return 1.0
    return 1.0 - float(scaled_cosine(steps, steps)[np.tril_indices(len(steps), k=-1)].max())


def consistency(contradiction_probabilities: Sequence[float]) -> float:
    """1 - max P(contradiction) over the pairs; 1 when there is no pair."""
    if len(contradiction_probabilities) == 0:
        return 1.0
    return 1.0 - float(max(contradiction_probabilities))


def step_pairs(steps: Sequence[str]) -> list[tuple[str, str]]:
    """(premise h_j, hypothesis h_i) for every j < i: Self-Consistency's pairs."""
    return [(steps[j], steps[i]) for i in range(1, len(steps)) for j in range(i)]


def source_pairs(source: Sequence[str], steps: Sequence[str]) -> list[tuple[str, str]]:
    """(premise s_j, hypothesis h_i) for every source sentence and step: Source-Consistency's."""
    return [(sentence, step) for step in steps for sentence in source]


def perplexity_step(step_perplexities: Sequence[float]) -> float:
    """1 / ((1/N) sum_i PPL(h_i))."""
    return 1.0 / float(np.mean(step_perplexities))


def grammar_step(acceptable_probabilities: Sequence[float]) -> float:
    """(1/N) sum_i P(acceptable | h_i)."""
    return float(np.mean(acceptable_probabilities))


# --- scoring ------------------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _BatchedCache(Generic[K, V]):
    """Model outputs per unique input, computed in batches of inputs of similar length."""

    def __init__(
        self, compute: Callable[[list[K]], Sequence[V]], batch_size: int, size: Callable[[K], int]
    ) -> None:
        self._compute, self._batch_size, self._size = compute, batch_size, size
        self._values: dict[K, V] = {}

    def fill(self, keys: Iterable[K]) -> None:
        missing = sorted(set(keys) - self._values.keys(), key=lambda key: (self._size(key), key))
        for start in range(0, len(missing), self._batch_size):
            batch = missing[start : start + self._batch_size]
            values = self._compute(batch)
            if len(values) != len(batch):
                raise RuntimeError(f"a ROSCOE model gave {len(values)} outputs for {len(batch)}")
            self._values.update(zip(batch, values, strict=True))

    def __getitem__(self, key: K) -> V:
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        self._values.clear()


@dataclass(frozen=True)
class _Chain:
    steps: tuple[str, ...]
    source: tuple[str, ...]

    @property
    def chain_text(self) -> str:
        return " ".join(self.steps)

    @property
    def source_text(self) -> str:
        return " ".join(self.source)


@dataclass(frozen=True)
class SkippedFamily:
    """Scores of one family that could not be computed, and why."""

    family: str
    scores: tuple[str, ...]
    reason: str

    @property
    def message(self) -> str:
        names = ", ".join(self.scores)
        return f"ROSCOE {self.family.replace('_', ' ')} ({names}) skipped: {self.reason}"


@dataclass
class RoscoeResult:
    """Per-example scores (every name of SCORE_NAMES; None where skipped or undefined)."""

    scores: list[dict[str, float | None]]
    skipped: list[SkippedFamily] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores,
            "skipped": [
                {"family": s.family, "scores": list(s.scores), "reason": s.reason}
                for s in self.skipped
            ],
            "models": self.models,
        }


def _size_of_pair(pair: tuple[str, str]) -> int:
    return len(pair[0]) + len(pair[1])


def _pairwise(nli: ContradictionModel) -> Callable[[list[tuple[str, str]]], np.ndarray]:
    def contradiction(pairs: list[tuple[str, str]]) -> np.ndarray:
        return nli([premise for premise, _ in pairs], [hypothesis for _, hypothesis in pairs])

    return contradiction


def _parse_example(index: int, example: Any) -> _Chain:
    if not isinstance(example, Mapping):
        raise ValueError(
            f"ROSCOE example {index}: expected a mapping with 'source' and 'hypothesis', "
            f"got {type(example).__name__}"
        )
    for name, meaning in (("source", "the question"), ("hypothesis", "the reasoning chain")):
        if not isinstance(example.get(name), str):
            found = "missing" if name not in example else type(example[name]).__name__
            raise ValueError(
                f"ROSCOE example {index}: field {name!r} must be a string ({meaning}), got {found}"
            )
    return _Chain(
        tuple(split_steps(example["hypothesis"])), tuple(split_sentences(example["source"]))
    )


def _role_reason(role: str, models: RoscoeModels) -> str:
    detail = models.unavailable.get(role, "none was given")
    return f"{role} model unavailable ({detail}); provide it as RoscoeConfig.{role}_model"


class RoscoeScorer:
    """Scores reasoning chains against their questions. Models load once, at construction (or
    come in ``models``); a score whose model is missing is None, and ``skipped`` says why."""

    def __init__(
        self, config: RoscoeConfig | None = None, models: RoscoeModels | None = None
    ) -> None:
        self.config = config or RoscoeConfig()
        wanted_roles = {role for name in self.config.scores for role in ROLES_BY_SCORE[name]}
        if models is None:
            models = load_models(self.config, sorted(wanted_roles))
        self.models = models
        self.ready_roles = {role for role in wanted_roles if getattr(models, role) is not None}
        self.active = tuple(
            name for name in self.config.scores if set(ROLES_BY_SCORE[name]) <= self.ready_roles
        )
        self.skipped = self._skipped_families()
        for skipped in self.skipped:
            logger.warning(skipped.message)
        self._caches = {role: self._cache(role) for role in self.ready_roles}

    def _cache(self, role: str) -> _BatchedCache[Any, Any]:
        if role == "nli":
            assert self.models.nli is not None
            return _BatchedCache(_pairwise(self.models.nli), self.config.batch_size, _size_of_pair)
        batch_size = self.config.lm_batch_size if role == "perplexity" else self.config.batch_size
        return _BatchedCache(getattr(self.models, role), batch_size, len)

    def _skipped_families(self) -> list[SkippedFamily]:
        skipped = []
        for family in self.config.families:
            missing_by_role: dict[str, list[str]] = {}
            for name in SCORES_BY_FAMILY[family]:
                for role in ROLES_BY_SCORE[name]:
                    if role not in self.ready_roles:
                        missing_by_role.setdefault(role, []).append(name)
                        break
            for role, names in missing_by_role.items():
                reason = _role_reason(role, self.models)
                skipped.append(SkippedFamily(family, tuple(names), reason))
        return skipped

    def score(self, examples: Iterable[Mapping[str, Any]]) -> RoscoeResult:
        """Scores of each example (``source``: question text, ``hypothesis``: model output)."""
        chains = [_parse_example(index, example) for index, example in enumerate(examples)]
        scores: list[dict[str, float | None]] = []
        show = self.config.progress and len(chains) > _CHUNK
        with Progress(transient=True, disable=not show) as bar:
            task = bar.add_task("ROSCOE", total=len(chains))
            for start in range(0, len(chains), _CHUNK):
                chunk = chains[start : start + _CHUNK]
                self._precompute([chain for chain in chunk if chain.steps and chain.source])
                scores.extend(self._score_chain(chain) for chain in chunk)
                tokens = self._caches.get("token")
                if tokens is not None and len(tokens) > _MAX_CACHED_TOKEN_TEXTS:
                    tokens.clear()
                bar.update(task, advance=len(chunk))
        return RoscoeResult(scores, list(self.skipped), dict(self.models.names))

    def _precompute(self, chains: list[_Chain]) -> None:
        # The whole chain and source are the longest texts: encode them only for their scores.
        def wholes(c: _Chain) -> tuple[str, ...]:
            return (c.chain_text, c.source_text) if "info_chain" in self.active else ()

        def chain(c: _Chain) -> tuple[str, ...]:
            return (c.chain_text,) if "perplexity_chain" in self.active else ()

        inputs: dict[str, Callable[[_Chain], Iterable[Any]]] = {
            "sentence": lambda c: (*c.steps, *c.source, *wholes(c)),
            "token": lambda c: (*c.steps, *c.source),
            "nli": lambda c: (*step_pairs(c.steps), *source_pairs(c.source, c.steps)),
            "perplexity": lambda c: (*c.steps, *chain(c)),
            "grammar": lambda c: c.steps,
        }
        for role, cache in self._caches.items():
            cache.fill(key for chain in chains for key in inputs[role](chain))

    def _score_chain(self, chain: _Chain) -> dict[str, float | None]:
        scores: dict[str, float | None] = dict.fromkeys(SCORE_NAMES)
        if chain.steps and chain.source:
            values = self._values(chain)
            scores.update({name: values[name] for name in self.active})
        return scores

    def _values(self, chain: _Chain) -> dict[str, float]:
        """Every score whose models are ready (a family may need only some of them)."""
        values: dict[str, float] = {}
        caches = self._caches
        if "token" in caches:
            step_tokens = [caches["token"][step] for step in chain.steps]
            values["repetition_token"] = repetition_token(step_tokens)
        if "sentence" in caches:
            sentences = caches["sentence"]
            steps = np.stack([sentences[step] for step in chain.steps])
            source = np.stack([sentences[sentence] for sentence in chain.source])
            values["faithfulness_step"] = faithfulness_step(steps, source)
            values["info_step"] = info_step(steps, source)
            if "info_chain" in self.active:
                values["info_chain"] = info_chain(
                    sentences[chain.chain_text], sentences[chain.source_text]
                )
            values["repetition_step"] = repetition_step(steps)
            if "token" in caches:
                source_tokens = [caches["token"][sentence] for sentence in chain.source]
                values["faithfulness_token"] = faithfulness_token(
                    steps, source, step_tokens, source_tokens
                )
        if "nli" in caches:
            contradiction = caches["nli"]
            self_pairs = step_pairs(chain.steps)
            values["self_consistency"] = consistency([contradiction[p] for p in self_pairs])
            pairs = source_pairs(chain.source, chain.steps)
            values["source_consistency"] = consistency([contradiction[p] for p in pairs])
        if "perplexity" in caches:
            perplexities = caches["perplexity"]
            step_perplexities = [perplexities[step] for step in chain.steps]
            values["perplexity_step"] = perplexity_step(step_perplexities)
            if "perplexity_chain" in self.active:
                values["perplexity_chain"] = 1.0 / float(perplexities[chain.chain_text])
        if "grammar" in caches:
            values["grammar_step"] = grammar_step([caches["grammar"][s] for s in chain.steps])
        return values


def add_roscoe_scores(
    records: list[dict[str, Any]],
    config: RoscoeConfig | None = None,
    source_key: str = "source",
    hypothesis_key: str = "prediction",
) -> RoscoeResult:
    """Merge ROSCOE scores into per-example ``records`` in place (``source_key`` holds the
    question, ``hypothesis_key`` the model's output); returns the result for its skip notes."""
    result = RoscoeScorer(config).score(
        {"source": record[source_key], "hypothesis": record[hypothesis_key]} for record in records
    )
    for record, scores in zip(records, result.scores, strict=True):
        record.update(scores)
    return result
