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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ._present import present_class_probs
from ._tokens import GROUPS, check_choice, compute_dtype, connected_zero
from .cross_entropy import token_cross_entropy
from .dice import (
    ABSENT_POLICIES,
    WEIGHTINGS,
    generalized_dice_from_probs,
    self_adjusting_dice_from_cross_entropy,
)
from .focal import focal_from_cross_entropy
from .lovasz import lovasz_from_probs

LOSS_NAMES: tuple[str, ...] = ("ce", "focal", "sadl", "gdice", "lovasz")
ALIASES: dict[str, str] = {
    "cross_entropy": "ce",
    "focal_loss": "focal",
    "self_adjusting_dice": "sadl",
    "generalized_dice": "gdice",
    "lovasz_softmax": "lovasz",
}
SET_LOSSES = frozenset({"gdice", "lovasz"})
CE_SCOPES: tuple[str, ...] = ("all", "answer")


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


def parse_loss_spec(spec: str) -> dict[str, float]:
    """Parse ``"ce=0.6,lovasz=0.4"`` into weights; a bare name means weight 1."""
    weights: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        key = canonical_loss_name(name)
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
    """Token counts over a whole gradient-accumulation window (and all devices).

    ``labels`` counts supervised label tokens (what transformers passes as
    ``num_items_in_batch``); ``answer`` counts answer tokens. Given both, every token-mean term is
    exact over the window, whatever the answer share of each micro-batch.
    """

    labels: float | Tensor
    answer: float | Tensor


@dataclass
class ObjectiveOutput:
    loss: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)  # unweighted, detached, local


@dataclass
class Objective:
    """``sum_t w_t * L_t`` with CE over ``ce_scope`` tokens and every other term over answer tokens.

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
        weights = {canonical_loss_name(k): float(v) for k, v in dict(self.weights).items()}
        for name, weight in weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {weight}")
        if not any(weights.values()):
            raise ValueError("at least one loss weight must be positive")
        self.weights = {name: w for name, w in weights.items() if w > 0}
        check_choice("ce_scope", self.ce_scope, CE_SCOPES)
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
        ignore = self.ignore_index
        # Position t predicts token t + 1: pad the labels instead of slicing the logits, which
        # would copy all B x T x V of them.
        target = F.pad(labels, (0, 1), value=ignore)[:, 1:]
        supervised = target != ignore
        if answer_mask is None:
            answer = supervised
        else:
            if tuple(answer_mask.shape) != tuple(labels.shape):
                raise ValueError(
                    f"answer_mask shape {tuple(answer_mask.shape)} must equal labels shape "
                    f"{tuple(labels.shape)}"
                )
            answer = F.pad(answer_mask.bool(), (0, 1), value=False)[:, 1:] & supervised
        vocab = logits.shape[-1]
        uses_ce = "ce" in self.weights
        in_ce = supervised if self.ce_scope == "all" else answer
        rows_mask = (in_ce | answer) if uses_ce else answer
        row_index = rows_mask.reshape(-1).nonzero().squeeze(1)

        zero = connected_zero(logits)
        components: dict[str, Tensor] = {}
        total = zero
        n_labels = supervised.sum()
        n_answer = answer.sum()
        if row_index.numel():
            flat = logits.reshape(-1, vocab)
            rows = flat if row_index.numel() == flat.shape[0] else flat.index_select(0, row_index)
            rows = rows.to(compute_dtype(logits.dtype))
            row_targets = target.reshape(-1).index_select(0, row_index)
            if (row_targets < 0).any() or (row_targets >= vocab).any():
                raise ValueError(f"labels must be in [0, {vocab}) or equal ignore_index={ignore}")
            ce, log_normalizer = token_cross_entropy(rows, row_targets)
            is_answer = answer.reshape(-1).index_select(0, row_index)
            answer_rows = is_answer.nonzero().squeeze(1)
            for name, weight in self.weights.items():
                value = self._term(
                    name,
                    rows,
                    ce,
                    log_normalizer,
                    row_targets,
                    row_index,
                    in_ce,
                    answer_rows,
                    labels.shape[1],
                )
                components[name] = value.detach()
                counted_over_answer = name != "ce" or self.ce_scope == "answer"
                scale = self._share(num_items_in_batch, n_labels, n_answer, counted_over_answer)
                total = total + weight * value * scale
        else:
            components = {name: zero.detach() for name in self.weights}
        return ObjectiveOutput(total, components)

    def _term(
        self,
        name: str,
        rows: Tensor,
        ce: Tensor,
        log_normalizer: Tensor,
        row_targets: Tensor,
        row_index: Tensor,
        in_ce: Tensor,
        answer_rows: Tensor,
        seq_len: int,
    ) -> Tensor:
        if name == "ce":
            is_ce = in_ce.reshape(-1).index_select(0, row_index)
            return ce[is_ce].mean() if is_ce.any() else connected_zero(rows)
        if answer_rows.numel() == 0:
            return connected_zero(rows)
        if name == "focal":
            return focal_from_cross_entropy(ce[answer_rows], self.focal_gamma).mean()
        if name == "sadl":
            return self_adjusting_dice_from_cross_entropy(
                ce[answer_rows], self.sadl_alpha, self.sadl_gamma
            ).mean()
        if self.group == "sequence":
            sequence_of_row = row_index.index_select(0, answer_rows) // seq_len
            group_ids = torch.unique_consecutive(sequence_of_row, return_inverse=True)[1]
        else:
            group_ids = torch.zeros_like(answer_rows)
        present = present_class_probs(
            rows,
            log_normalizer[answer_rows],
            row_targets[answer_rows],
            group_ids,
            int(group_ids.max()) + 1,
            token_rows=answer_rows,
        )
        if name == "gdice":
            return generalized_dice_from_probs(
                present, self.gdice_weighting, self.gdice_absent, self.gdice_smooth
            )
        return lovasz_from_probs(present)

    @staticmethod
    def _share(
        num_items: int | float | Tensor | ItemCounts | None,
        n_labels: Tensor,
        n_answer: Tensor,
        counted_over_answer: bool,
    ) -> Tensor | float:
        """This micro-batch's share of the window's tokens of the kind a term averages over."""
        if num_items is None:
            return 1.0
        if isinstance(num_items, ItemCounts):
            if counted_over_answer:
                return n_answer / num_items.answer
            return n_labels / num_items.labels
        # Only the label count is known: weight every term by this micro-batch's share of labels.
        return n_labels / num_items
