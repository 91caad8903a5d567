"""The training objective: L = lambda * CE + (1 - lambda) * L_X (SPEC section 1).

``Objective`` takes a causal LM's logits and *unshifted* labels (plus an optional answer mask),
shifts them itself, and normalises so that it can be returned from a transformers
``compute_loss_func`` as is: with ``num_items_in_batch`` (the number of supervised label tokens
in the whole gradient-accumulation window, across devices when the Trainer averages tokens across
devices), each term contributes its local value times this micro-batch's share of the window, so
summing micro-batches gives the window's token mean for CE, focal and self-adjusting dice.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from seglm.choices import check_choice

from ._present import PresentClassProbs, present_class_layout, present_class_probs
from ._statistics import row_statistics
from ._tokens import GROUPS, check_targets, connected_zero, group_ids_of
from .cross_entropy import token_mean
from .dft import dft_from_cross_entropy
from .dice import (
    ABSENT_POLICIES,
    WEIGHTINGS,
    generalized_dice_from_probs,
    self_adjusting_dice_from_cross_entropy,
)
from .focal import focal_from_cross_entropy
from .lovasz import lovasz_from_probs

LOSS_NAMES: tuple[str, ...] = ("ce", "focal", "sadl", "gdice", "lovasz", "dft")
ALIASES: dict[str, str] = {
    "cross_entropy": "ce",
    "focal_loss": "focal",
    "self_adjusting_dice": "sadl",
    "generalized_dice": "gdice",
    "lovasz_softmax": "lovasz",
    "dynamic_fine_tuning": "dft",
}
SET_LOSSES = frozenset({"gdice", "lovasz"})
CE_SCOPES: tuple[str, ...] = ("all", "answer")
SCOPE_SEPARATOR = "@"


def canonical_loss_name(name: str) -> str:
    """Map a loss name or alias to its short name, or fail with a suggestion."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in LOSS_NAMES:
        known = [*LOSS_NAMES, *ALIASES]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss {name!r}{hint} (known: {', '.join(LOSS_NAMES)})")
    return key


def split_term(term: str) -> tuple[str, str | None]:
    """``"ce@answer"`` -> ``("ce", "answer")``; ``"lovasz"`` -> ``("lovasz", None)``."""
    name, sep, scope = term.partition(SCOPE_SEPARATOR)
    if not sep:
        return canonical_loss_name(name), None
    scope = scope.strip().lower()
    if scope not in CE_SCOPES:
        raise ValueError(
            f"term {term.strip()!r}: scope {scope!r} is not one of {', '.join(CE_SCOPES)} "
            f"(NAME{SCOPE_SEPARATOR}all: every supervised token; "
            f"NAME{SCOPE_SEPARATOR}answer: answer tokens only)"
        )
    return canonical_loss_name(name), scope


def canonical_term(term: str) -> str:
    """A term as the objective keys it: the loss's short name, with ``@scope`` unless the scope
    is the loss's own (answer for every loss but CE, whose default is the objective's
    ``ce_scope``, so ``ce`` and ``ce@answer`` may stand side by side)."""
    name, scope = split_term(term)
    if name in SET_LOSSES and scope == "all":
        raise ValueError(
            f"term {term.strip()!r}: {name} is a set loss over the answer's tokens; "
            f"{SCOPE_SEPARATOR}all is offered for per-token losses (ce, focal, sadl, dft) only"
        )
    if scope is None or (name != "ce" and scope == "answer"):
        return name
    return f"{name}{SCOPE_SEPARATOR}{scope}"


def parse_loss_spec(spec: str) -> dict[str, float]:
    """Parse ``"ce=0.6,lovasz=0.4"`` into weights keyed by term; a lone bare name (``"lovasz"``)
    means weight 1, and a mixture must weigh every term.

    A term may carry a scope, ``NAME@all`` or ``NAME@answer``: ``ce=0.6,ce@answer=0.4`` puts
    40% of CE's weight on the answer tokens alone (the weighting control of a comparison)."""
    weights: dict[str, float] = {}
    items = [part.strip() for part in spec.split(",") if part.strip()]
    for item in items:
        name, sep, value = item.partition("=")
        if not sep and len(items) > 1:
            raise ValueError(
                f"loss spec {spec!r}: {name.strip()!r} has no weight; in a mixture every term "
                f"needs one (e.g. {name.strip()}=0.4)"
            )
        key = canonical_term(name)
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise ValueError(
                f"loss spec {spec!r}: weight of {name.strip()!r} is not a number: {value!r}"
            ) from None
        if key in weights:
            raise ValueError(f"loss spec {spec!r}: {key!r} appears twice")
        weights[key] = weight
    if not weights:
        raise ValueError(f"loss spec {spec!r} names no loss")
    return weights


@dataclass(frozen=True)
class ItemCounts:
    """Counts over a whole gradient-accumulation window (and all devices).

    ``labels`` counts supervised label tokens (what transformers passes as
    ``num_items_in_batch``); ``answer`` counts answer tokens; ``sequences`` counts examples with
    at least one answer token. Given them, every token-mean term is exact over the window, and so
    is a ``sequence``-grouped set loss (a mean over examples), whatever the micro-batch split.
    """

    labels: float | Tensor
    answer: float | Tensor
    sequences: float | Tensor | None = None


@dataclass
class SelectedRows:
    """The positions some term uses, after shifting (position t predicts token t + 1)."""

    index: Tensor  # [n] flat position b * T + t
    targets: Tensor  # [n] the shifted label
    in_answer: Tensor  # [n] bool: terms of scope answer average over this row (else: all rows)
    counts: dict[str, Tensor]  # the micro-batch's labels, answer tokens and answered sequences

    def of_scope(self, scope: str) -> Tensor | slice:
        """The rows a term of ``scope`` averages over (every row for ``all``)."""
        return self.in_answer if scope == "answer" else slice(None)


@dataclass
class ObjectiveOutput:
    loss: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)  # unweighted, detached, local


@dataclass
class Objective:
    """``sum_t w_t * L_t`` with CE over ``ce_scope`` tokens and every other term over answer tokens,
    unless a term names its scope (``ce@answer``, ``focal@all``: see :func:`parse_loss_spec`).

    ``Objective.from_spec("ce=0.6,lovasz=0.4")`` is the paper's setting (lambda = 0.6).
    ``group`` is the grouping of the set losses (GDice, Lovász). It defaults to ``sequence``, one
    group per example, so the loss of an example does not depend on which other examples share its
    micro-batch, on the micro-batch size or on how a batch is split across devices; ``batch``
    (one group per micro-batch) is what the paper ran.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: {"ce": 1.0})
    ce_scope: str = "all"
    group: str = "sequence"
    focal_gamma: float = 2.0
    sadl_alpha: float = 1.0
    sadl_gamma: float = 1.0
    gdice_weighting: str = "square"
    gdice_absent: str = "present"
    gdice_smooth: float = 1e-5
    ignore_index: int = -100

    def __post_init__(self) -> None:
        check_choice("ce_scope", self.ce_scope, CE_SCOPES)
        weights: dict[str, float] = {}
        scopes: dict[tuple[str, str], str] = {}
        for name, value in dict(self.weights).items():
            key = canonical_term(name)
            if key in weights:
                raise ValueError(f"weights: {name!r} is {key!r}, which appears twice")
            weights[key] = float(value)
            other = scopes.setdefault((split_term(key)[0], self._scope_of(key)), key)
            if other != key:
                raise ValueError(
                    f"weights: {other!r} and {key!r} are the same term (ce_scope is "
                    f"{self.ce_scope!r})"
                )
        for name, weight in weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {weight}")
        if not any(weights.values()):
            raise ValueError("at least one loss weight must be positive")
        self.weights = {name: w for name, w in weights.items() if w > 0}
        check_choice("group", self.group, GROUPS)
        check_choice("gdice_weighting", self.gdice_weighting, WEIGHTINGS)
        check_choice("gdice_absent", self.gdice_absent, ABSENT_POLICIES)

    @classmethod
    def from_spec(cls, spec: str, **kwargs: object) -> Objective:
        return cls(weights=parse_loss_spec(spec), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def mix(cls, loss: str, lam: float = 0.6, **kwargs: object) -> Objective:
        """The paper's form: ``lam * CE + (1 - lam) * loss``."""
        if not 0 <= lam <= 1:
            raise ValueError(f"lambda must be in [0, 1], got {lam}")
        key = canonical_loss_name(loss)
        weights = {"ce": 1.0} if key == "ce" else {"ce": lam, key: 1 - lam}
        return cls(weights=weights, **kwargs)  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        return ",".join(f"{name}={weight:g}" for name, weight in self.weights.items())

    def _scope_of(self, term: str) -> str:
        name, scope = split_term(term)
        return scope or (self.ce_scope if name == "ce" else "answer")

    def scope(self, term: str) -> str:
        """The tokens term ``term`` averages over: ``all`` (supervised) or ``answer``."""
        return self._scope_of(term)

    @property
    def label_scope(self) -> str:
        """The widest scope of any term: ``all`` when a term needs the prompt's labels."""
        return "all" if any(self.scope(t) == "all" for t in self.weights) else "answer"

    def select_rows(self, labels: Tensor, answer_mask: Tensor | None = None) -> SelectedRows:
        """Shift the labels and keep the positions some term uses (shared with the fused path)."""
        ignore = self.ignore_index
        # Position t predicts token t + 1: pad the labels instead of slicing the logits, which
        # would copy all B x T x V of them.
        target = F.pad(labels, (0, 1), value=ignore)[:, 1:]
        supervised = target != ignore
        answer = supervised
        if answer_mask is not None:
            if tuple(answer_mask.shape) != tuple(labels.shape):
                raise ValueError(
                    f"answer_mask shape {tuple(answer_mask.shape)} must equal labels shape "
                    f"{tuple(labels.shape)}"
                )
            answer = F.pad(answer_mask.bool(), (0, 1), value=False)[:, 1:] & supervised
        used = supervised if self.label_scope == "all" else answer
        index = used.reshape(-1).nonzero().squeeze(1)
        counts = {
            "labels": supervised.sum(),
            "answer": answer.sum(),
            "sequences": answer.any(dim=1).sum(),
        }
        return SelectedRows(
            index,
            target.reshape(-1).index_select(0, index),
            answer.reshape(-1).index_select(0, index),
            counts,
        )

    def __call__(
        self,
        logits: Tensor,
        labels: Tensor,
        answer_mask: Tensor | None = None,
        num_items_in_batch: int | float | Tensor | ItemCounts | None = None,
    ) -> ObjectiveOutput:
        """Shift, select, compute every term once, weight and normalise.

        ``logits`` ``[B, T, V]``; ``labels`` ``[B, T]`` unshifted, ``ignore_index`` where no loss
        applies; ``answer_mask`` ``[B, T]`` marks answer tokens (EOS included). Without it the
        answer is every supervised label, which is right for completion-only labels.
        """
        if logits.dim() != 3 or tuple(labels.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"expected logits [B, T, V] and labels [B, T]; got {tuple(logits.shape)} and "
                f"{tuple(labels.shape)}"
            )
        vocab = logits.shape[-1]
        rows = self.select_rows(labels, answer_mask)
        check_targets(rows.targets, vocab, self.ignore_index)
        flat = logits.reshape(-1, vocab)
        answer_of_row = rows.in_answer.nonzero().squeeze(1)

        present_layout = None
        pair_rows = pair_classes = None
        if SET_LOSSES & self.weights.keys() and answer_of_row.numel():
            answer_rows = rows.index.index_select(0, answer_of_row)
            group_ids, num_groups = group_ids_of(answer_rows, labels.shape[1], self.group)
            present_layout = present_class_layout(
                rows.targets.index_select(0, answer_of_row), group_ids, num_groups, vocab
            )
            pair_rows, pair_classes = answer_rows[present_layout.tokens], present_layout.pair_class
        ce, log_normalizer, pair_logits = row_statistics(
            flat, rows.index, rows.targets, pair_rows, pair_classes
        )
        present = (
            None
            if present_layout is None
            else present_class_probs(
                present_layout, pair_logits, log_normalizer.index_select(0, answer_of_row)
            )
        )

        total = connected_zero(logits)
        components: dict[str, Tensor] = {}
        for name, weight in self.weights.items():
            value = self.term(name, ce[rows.of_scope(self.scope(name))], present)
            components[name] = value.detach()
            scale = self.term_share(name, num_items_in_batch, rows.counts)
            total = total + weight * value * scale
        return ObjectiveOutput(total, components)

    def term(self, term: str, ce: Tensor, present: PresentClassProbs | None) -> Tensor:
        """The value of ``term`` from the per-token CE of the rows of its scope (and, for a set
        loss, the present-class probabilities of the answer rows)."""
        name, _ = split_term(term)
        if name == "ce":
            return token_mean(ce)
        if name == "focal":
            return token_mean(focal_from_cross_entropy(ce, self.focal_gamma))
        if name == "sadl":
            return token_mean(
                self_adjusting_dice_from_cross_entropy(ce, self.sadl_alpha, self.sadl_gamma)
            )
        if name == "dft":
            return token_mean(dft_from_cross_entropy(ce))
        if present is None:  # no answer token in this micro-batch
            return ce.sum()
        if name == "gdice":
            return generalized_dice_from_probs(
                present, self.gdice_weighting, self.gdice_absent, self.gdice_smooth
            )
        return lovasz_from_probs(present)

    def term_share(
        self,
        name: str,
        num_items: int | float | Tensor | ItemCounts | None,
        local: dict[str, Tensor],
    ) -> Tensor | float:
        """This micro-batch's share of the window for term ``name``: ``local`` holds its counts of
        supervised labels, answer tokens and sequences with an answer token."""
        if name in SET_LOSSES and self.group == "sequence":
            kind = "sequences"  # a mean over examples
        elif self.scope(name) == "answer":
            kind = "answer"
        else:
            kind = "labels"
        return self._share(num_items, local, kind)

    @staticmethod
    def _share(
        num_items: int | float | Tensor | ItemCounts | None,
        local: dict[str, Tensor],
        kind: str,
    ) -> Tensor | float:
        """This micro-batch's share of the window's items of the kind a term averages over."""
        if num_items is None:
            return 1.0
        window = getattr(num_items, kind, None) if isinstance(num_items, ItemCounts) else None
        if window is None and isinstance(num_items, ItemCounts):
            # Sequences not counted: fall back to the answer-token share.
            kind, window = "answer", num_items.answer
        if window is None:
            # Only the label count is known: weight every term by this micro-batch's label share.
            kind, window = "labels", num_items
        # A window without such items has local == 0: its share is 0, not 0 / 0.
        count = local[kind]
        return count / torch.as_tensor(window, device=count.device).clamp_min(1)


# The objective's options that a training config sets, each from its field of the same name (the
# loss spec gives the weights; labels always mark ignored positions with -100).
OBJECTIVE_OPTIONS: tuple[str, ...] = tuple(
    option.name for option in fields(Objective) if option.name not in ("weights", "ignore_index")
)
