"""The training objective: L = lambda * CE + (1 - lambda) * L_X (docs/method.md, "The objective").

``Objective`` takes a causal LM's logits and *unshifted* labels (plus an optional answer mask),
shifts them itself, and normalises so that it can be returned from a transformers
``compute_loss_func`` as is: with ``num_items_in_batch`` (the number of supervised label tokens
in the whole gradient-accumulation window, across devices when the Trainer averages tokens across
devices), each term contributes its local value times this micro-batch's share of the window, so
summing micro-batches gives the window's token mean for every per-token term.

Which terms exist and how each is computed comes from the loss registry
(:mod:`seglm.losses.registry`); the spec grammar from :mod:`seglm.losses.spec`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seglm.choices import check_choice

from ._present import PresentClassProbs, present_class_layout, present_class_probs
from ._statistics import chunks, row_statistics
from ._tokens import (
    GROUPS,
    check_targets,
    compute_dtype,
    connected_zero,
    group_ids_of,
    token_mean,
)
from .registry import LossTerm, option_fields
from .spec import CE_SCOPES, LossSpec, Term, option_value


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


def as_loss_spec(weights: LossSpec | str | Mapping[str, float] | None) -> LossSpec:
    """A spec from a spec, its text, or weights by term (``{"ce": 0.6, "lovasz": 0.4}``)."""
    if weights is None:
        return LossSpec.parse("ce")
    if isinstance(weights, LossSpec | str):
        return LossSpec.parse(weights)
    return LossSpec.parse(",".join(f"{term}={float(weight)!r}" for term, weight in weights.items()))


class Objective:
    """``sum_t w_t * L_t`` with CE over ``ce_scope`` tokens and every other term over answer tokens,
    unless a term names its scope (``ce@answer``, ``focal@all``: see :mod:`seglm.losses.spec`).

    ``Objective.from_spec("ce=0.6,lovasz=0.4")`` is the paper's setting (lambda = 0.6).
    ``group`` is the grouping of the set losses (GDice, Lovász). It defaults to ``sequence``, one
    group per example, so the loss of an example does not depend on which other examples share its
    micro-batch, on the micro-batch size or on how a batch is split across devices; ``batch``
    (one group per micro-batch) is what the paper ran. Loss options come from the registry's
    defaults, then the keyword arguments named like the training config's fields
    (``focal_gamma=1.5``), then the options written in the spec (``focal(gamma=3)``).
    """

    def __init__(
        self,
        weights: LossSpec | str | Mapping[str, float] | None = None,
        ce_scope: str = "all",
        group: str = "sequence",
        ignore_index: int = -100,
        **options: Any,
    ) -> None:
        check_choice("ce_scope", ce_scope, CE_SCOPES)
        check_choice("group", group, GROUPS)
        self.loss_spec = as_loss_spec(weights)
        self.ce_scope, self.group, self.ignore_index = ce_scope, group, ignore_index
        fields = option_fields()
        unknown = [name for name in options if name not in fields]
        if unknown:
            raise TypeError(f"Objective got an unknown option {unknown[0]!r}")
        settings = {
            name: option_value(fields[name][0], fields[name][1], value)
            for name, value in options.items()
        }
        self._settings = settings
        seen: dict[tuple[str, str], str] = {}
        for term in self.loss_spec.terms:
            other = seen.setdefault((term.name, term.scope_in(ce_scope)), term.key)
            if other != term.key:
                raise ValueError(
                    f"weights: {other!r} and {term.key!r} are the same term (ce_scope is "
                    f"{ce_scope!r})"
                )
        self.terms: dict[str, Term] = {t.key: t for t in self.loss_spec.terms if t.weight > 0}
        self.weights: dict[str, float] = {key: term.weight for key, term in self.terms.items()}
        self.options: dict[str, dict[str, Any]] = {
            key: {
                **term.term.defaults(),
                **{
                    name: settings[term.term.field_name(name)]
                    for name in term.term.options
                    if term.term.field_name(name) in settings
                },
                **dict(term.options),
            }
            for key, term in self.terms.items()
        }

    def __getattr__(self, name: str) -> Any:
        """A loss option by its config field's name (``objective.focal_gamma``): the value set,
        else the registry's default."""
        fields = option_fields()
        if name.startswith("_") or name not in fields:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        declared = fields[name][2]
        return self._settings.get(name, declared.default)

    @classmethod
    def from_spec(cls, spec: LossSpec | str, **kwargs: Any) -> Objective:
        return cls(spec, **kwargs)

    @classmethod
    def mix(cls, loss: str, lam: float = 0.6, **kwargs: Any) -> Objective:
        """The paper's form: ``lam * CE + (1 - lam) * loss``."""
        return cls(LossSpec.mix(loss, lam), **kwargs)

    @property
    def spec(self) -> str:
        return ",".join(str(term) for term in self.terms.values())

    def loss(self, key: str) -> LossTerm:
        """The registered loss of term ``key``."""
        return self.terms[key].term

    def scope(self, key: str) -> str:
        """The tokens term ``key`` averages over: ``all`` (supervised) or ``answer``."""
        return self.terms[key].scope_in(self.ce_scope)

    @property
    def label_scope(self) -> str:
        """The widest scope of any term: ``all`` when a term needs the prompt's labels."""
        return "all" if any(self.scope(key) == "all" for key in self.terms) else "answer"

    @property
    def set_terms(self) -> list[str]:
        return [key for key in self.terms if self.loss(key).is_set]

    @property
    def uses_reference(self) -> bool:
        """Whether a term needs a reference model's logits (``reference_logits``)."""
        return any(self.loss(key).uses_reference for key in self.terms)

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
        reference_logits: Tensor | None = None,
    ) -> ObjectiveOutput:
        """Shift, select, compute every term once, weight and normalise.

        ``logits`` ``[B, T, V]``; ``labels`` ``[B, T]`` unshifted, ``ignore_index`` where no loss
        applies; ``answer_mask`` ``[B, T]`` marks answer tokens (EOS included). Without it the
        answer is every supervised label, which is right for completion-only labels.
        ``reference_logits`` ``[B, T, V]``: the reference model's, for terms that use one (ASFT).
        """
        if logits.dim() != 3 or tuple(labels.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"expected logits [B, T, V] and labels [B, T]; got {tuple(logits.shape)} and "
                f"{tuple(labels.shape)}"
            )
        self._check_reference(reference_logits, logits.shape)
        vocab = logits.shape[-1]
        rows = self.select_rows(labels, answer_mask)
        check_targets(rows.targets, vocab, self.ignore_index)
        flat = logits.reshape(-1, vocab)
        answer_of_row = rows.in_answer.nonzero().squeeze(1)

        present_layout = None
        pair_rows = pair_classes = None
        if self.set_terms and answer_of_row.numel():
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
        kl = None
        if self.uses_reference:
            assert reference_logits is not None
            reference = reference_logits.reshape(-1, vocab)
            kl = reference_kl(flat, rows.index, log_normalizer, reference)

        total = connected_zero(logits)
        components: dict[str, Tensor] = {}
        for key, weight in self.weights.items():
            scope = rows.of_scope(self.scope(key))
            statistic = self.row_statistic(key, flat, rows.index[scope])
            value = self.term_value(
                key, ce[scope], present, statistic, None if kl is None else kl[scope]
            )
            components[key] = value.detach()
            share = self.term_share(key, num_items_in_batch, rows.counts, value.dtype)
            total = total + weight * value * share
        return ObjectiveOutput(total, components)

    def _check_reference(self, reference: Tensor | None, shape: torch.Size) -> None:
        if not self.uses_reference:
            return
        if reference is None:
            names = [key for key in self.terms if self.loss(key).uses_reference]
            raise ValueError(
                f"term(s) {', '.join(names)} compare the model with a reference model: pass "
                "reference_logits (the trainers compute them with the adapters disabled)"
            )
        if tuple(reference.shape) != tuple(shape):
            raise ValueError(
                f"reference_logits {tuple(reference.shape)} must have the logits' shape "
                f"{tuple(shape)}"
            )

    def row_statistic(self, key: str, logits: Tensor, rows: Tensor) -> Tensor | None:
        """Term ``key``'s detached statistic of each of ``logits[rows]`` (``[M, V]``); None for a
        term without one."""
        compute = self.loss(key).row_statistic
        if compute is None:
            return None
        return detached_row_statistic(compute, self.options[key], logits, rows)

    def term_value(
        self,
        key: str,
        ce: Tensor,
        present: PresentClassProbs | None = None,
        statistic: Tensor | None = None,
        kl: Tensor | None = None,
    ) -> Tensor:
        """The value of term ``key`` from the per-token CE of the rows of its scope (and their
        row statistic and KL to the reference where the term uses them; for a set loss, the
        present-class probabilities of the answer rows)."""
        loss, options = self.loss(key), self.options[key]
        if loss.is_set:
            if present is None:  # no answer token in this micro-batch
                return ce.sum()
            return loss.compute(present, **options)
        extra: dict[str, Tensor] = {}
        if loss.row_statistic is not None:
            assert statistic is not None
            extra["statistic"] = statistic
        if loss.uses_reference:
            assert kl is not None
            extra["kl"] = kl
        return token_mean(loss.compute(ce, **extra, **options))

    def term_share(
        self,
        key: str,
        num_items: int | float | Tensor | ItemCounts | None,
        local: dict[str, Tensor],
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | float:
        """This micro-batch's share of the window for term ``key`` (in ``dtype``, the loss's):
        ``local`` holds its counts of supervised labels, answer tokens and sequences with an
        answer token."""
        if self.loss(key).is_set and self.group == "sequence":
            kind = "sequences"  # a mean over examples
        elif self.scope(key) == "answer":
            kind = "answer"
        else:
            kind = "labels"
        return share_of_window(num_items, local, kind, dtype)


def share_of_window(
    num_items: int | float | Tensor | ItemCounts | None,
    local: dict[str, Tensor],
    kind: str,
    dtype: torch.dtype = torch.float32,
) -> Tensor | float:
    """This micro-batch's share of the window's items of the kind a term averages over, divided
    in ``dtype`` (integer counts divided would give float32, too coarse for a float64 loss)."""
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
    window = torch.as_tensor(window, device=count.device).clamp_min(1)
    return count.to(dtype) / window.to(dtype)


def detached_row_statistic(
    compute: Callable[..., Tensor], options: dict[str, Any], logits: Tensor, rows: Tensor
) -> Tensor:
    """``compute(rows of logits, **options)`` for each of ``logits[rows]`` (``[M, V]``), a chunk
    of rows at a time in the compute dtype, without gradient."""
    dtype = compute_dtype(logits.dtype)
    with torch.no_grad():
        parts = [
            compute(logits[rows[chunk]].to(dtype), **options)
            for chunk in chunks(rows.shape[0], logits.shape[1])
        ]
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=dtype)


def reference_kl(logits: Tensor, rows: Tensor, log_normalizer: Tensor, reference: Tensor) -> Tensor:
    """KL(q || p) of each of ``logits[rows]`` (``[M, V]``) with q = softmax of the same rows of
    ``reference``: sum_v q_v log q_v - sum_v q_v x_v + lse(x), differentiable in the logits
    (its gradient is p - q), a chunk of rows at a time."""
    parts = []
    for chunk in chunks(rows.shape[0], logits.shape[1]):
        selected = rows[chunk]
        with torch.no_grad():
            log_q = reference[selected].to(log_normalizer.dtype).log_softmax(-1)
            q = log_q.exp()
            negative_entropy = (q * log_q).sum(-1)
        parts.append(negative_entropy - (q * logits[selected].to(q.dtype)).sum(-1))
    if not parts:
        return log_normalizer
    return torch.cat(parts) + log_normalizer


# The objective's options that a training config sets, each from its field of the same name (the
# loss spec gives the weights; labels always mark ignored positions with -100).
OBJECTIVE_OPTIONS: tuple[str, ...] = ("ce_scope", "group", *option_fields())
