"""The objective straight from final hidden states and the output layer, a chunk of rows at a time.

The materialised path holds logits for every position: B x T x V values upcast to float32, plus
the softmax and its gradient (at 16k tokens and a 152k vocabulary, ~10 GB per copy).
``fused_objective_loss`` takes the hidden states ``[B, T, H]`` and the output weight ``[V, H]``
instead, and never holds more than ``chunk_size`` rows of logits:

- positions that no term uses are dropped before the projection;
- every term is a function of small statistics of each row's logits: the log-sum-exp, the target
  logit and, for the set losses, the logits of the classes present in the row's group. A row's
  logit gradient is therefore ``g_lse * softmax`` plus a few sparse entries on those columns;
- CE, focal and self-adjusting dice are token means of functions of ce = lse - target logit, so a
  chunk's gradient is known as soon as its logits are: one pass gives values and gradients, with
  the materialised path's matmuls (three with a trained head, two with a frozen one);
- generalized dice and Lovász couple the rows of a group: pass 1 gathers the statistics (and
  ``softmax @ W`` per row, the dense part of hidden's gradient), the objective's own term code
  gives the loss and its gradient with respect to them by ordinary autograd, and, only when the
  head is trained, pass 2 recomputes each chunk's logits for the weight's gradient: four matmuls
  with a trained head (the materialised path: three), two with a frozen one (also two).

Gradients are computed during the forward (as Liger-Kernel's fused linear cross-entropy does) and
only scaled in the backward; the loss is a scalar, so this is exact whatever multiplies it. Hence:
one backward per forward (no ``retain_graph`` re-use), no double backward, and a forward re-run by
activation checkpointing does the head's work twice. Values and gradients equal the materialised
path's up to float rounding (bf16 logits are rounded as the head rounds them; under autocast the
head's matmul runs in the autocast dtype, as ``F.linear`` would).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._present import (
    PresentClassLayout,
    PresentClassProbs,
    present_class_layout,
    present_class_probs,
)
from ._tokens import check_targets, compute_dtype, group_ids_of
from .objective import ItemCounts, Objective, ObjectiveOutput, SelectedRows

# Default rows per chunk: about this many float32 logits (256 MiB) in a chunk, whatever the
# number of tokens, so the memory of the loss depends on the vocabulary only.
CHUNK_VALUES = 2**26


def default_chunk_size(vocab: int) -> int:
    return max(1, CHUNK_VALUES // vocab)


@dataclass
class _PairColumns:
    """Where the set losses' statistics come from.

    ``present_class_probs`` wants, for each (group, present class) pair k and each position t of
    the group, the logit of the pair's class: ``[K, T]`` values at scattered columns. Chunks are
    rows, so the logits are gathered per answer row instead: the row's logits at its group's
    present classes, an ``[m, K_max]`` block (K_max: most classes in one group) from which the
    ``[K, T]`` matrix is one gather.
    """

    layout: PresentClassLayout
    rows: Tensor  # [m] the answer rows among the n rows, increasing
    group_ids: Tensor  # [m] group of each answer row
    group_classes: Tensor  # [G, K_max] present classes of each group in pair order, 0-padded
    pair_slot: Tensor  # [K, 1] column of pair k's class in its group's block

    def columns(self, rows: slice, answers: slice) -> tuple[Tensor, Tensor]:
        """Chunk-local row and class index ``[a, K_max]`` of the answer rows of a chunk."""
        local = (self.rows[answers] - rows.start).unsqueeze(1)
        classes = self.group_classes[self.group_ids[answers]]
        return local.expand_as(classes), classes

    def group_answers(self) -> list[slice]:
        """The slice of the answer rows of each group (groups are contiguous runs)."""
        sizes = self.layout.group_size.tolist()
        ends = itertools.accumulate(sizes)
        return [slice(end - size, end) for end, size in zip(ends, sizes, strict=True)]

    def probs(self, block: Tensor, log_normalizer: Tensor) -> PresentClassProbs:
        pair_logits = block[self.layout.tokens, self.pair_slot]
        return present_class_probs(self.layout, pair_logits, log_normalizer[self.rows])


def _pair_columns(rows: SelectedRows, group: str, seq_len: int, vocab: int) -> _PairColumns:
    """Groups and present classes as ``Objective.__call__`` forms them."""
    answer = rows.in_answer.nonzero().squeeze(1)
    answer_positions = rows.index.index_select(0, answer)
    group_ids, num_groups = group_ids_of(answer_positions, seq_len, group)
    targets = rows.targets.index_select(0, answer)
    layout = present_class_layout(targets, group_ids, num_groups, vocab)
    classes_per_group = torch.bincount(layout.pair_group, minlength=num_groups)
    first_pair = torch.cumsum(classes_per_group, 0) - classes_per_group
    slot = torch.arange(layout.pair_group.numel(), device=answer.device)
    slot = slot - first_pair[layout.pair_group]
    group_classes = answer.new_zeros(num_groups, int(classes_per_group.max()))
    group_classes[layout.pair_group, slot] = layout.pair_class.squeeze(1)
    return _PairColumns(layout, answer, group_ids, group_classes, slot.unsqueeze(1))


@dataclass
class _Plan:
    """Everything the autograd function needs besides hidden, weight and bias."""

    objective: Objective
    names: list[str]  # the terms, in the order of ``loss_weights`` and of the term values
    loss_weights: Tensor  # [terms]: the objective's weight times this micro-batch's share
    rows_per_term: Tensor  # [terms]: how many rows each term averages over
    rows: SelectedRows
    pairs: _PairColumns | None  # None: no set term, or no answer row to apply one to
    chunk_size: int
    needs_grad: tuple[bool, bool, bool]  # hidden, weight, bias

    def chunks(self) -> Iterator[tuple[slice, slice]]:
        """Row slices of the chunks, each with the slice of its answer rows among all of them."""
        n = self.rows.targets.shape[0]
        starts = list(range(0, n, self.chunk_size))
        answer_bounds = [0] * (len(starts) + 1)
        if self.pairs is not None:
            edges = torch.tensor([*starts, n], device=self.pairs.rows.device)
            answer_bounds = torch.searchsorted(self.pairs.rows, edges).tolist()
        for i, start in enumerate(starts):
            rows = slice(start, min(start + self.chunk_size, n))
            yield rows, slice(answer_bounds[i], answer_bounds[i + 1])

    def term_values(
        self, ce: Tensor, rows: slice, present: PresentClassProbs | None
    ) -> tuple[Tensor, Tensor]:
        """Each term's value over ``rows`` (``ce`` is theirs), and how many rows it averaged."""
        in_answer = self.rows.in_answer[rows]
        answer_ce = ce[in_answer]
        values, counts = [], []
        for name in self.names:
            if self.objective.scope(name) == "answer":
                values.append(self.objective.term_value(name, answer_ce, present))
                counts.append(in_answer.sum())
            else:
                values.append(self.objective.term_value(name, ce, present))
                counts.append(in_answer.new_tensor(ce.shape[0], dtype=torch.long))
        return torch.stack(values), torch.stack(counts)

    def chunk_loss(self, ce: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        """Weighted loss and term values contributed by one chunk (per-token terms only): the
        mean over the chunk's rows times the chunk's share of the rows the term averages over."""
        values, counts = self.term_values(ce, rows, None)
        values = values * counts / self.rows_per_term.clamp_min(1)
        return (values * self.loss_weights).sum(), values

    def total_loss(
        self, log_normalizer: Tensor, target_logit: Tensor, pair_block: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Weighted loss and term values from the statistics of all rows."""
        assert self.pairs is not None
        present = self.pairs.probs(pair_block, log_normalizer)
        values, _ = self.term_values(log_normalizer - target_logit, slice(None), present)
        return (values * self.loss_weights).sum(), values


@dataclass
class _Gradients:
    """Gradients filled chunk by chunk; the weight's and bias's summed in the compute dtype."""

    hidden: Tensor | None  # [n, H]
    weight: Tensor | None  # [V, H]
    bias: Tensor | None  # [V]

    @classmethod
    def zeros(
        cls, hidden: Tensor, weight: Tensor, bias: Tensor | None, needs: tuple[bool, bool, bool]
    ) -> _Gradients:
        dtype = compute_dtype(weight.dtype)
        return cls(
            hidden.new_zeros(hidden.shape) if needs[0] else None,
            torch.zeros_like(weight, dtype=dtype) if needs[1] else None,
            torch.zeros_like(bias, dtype=dtype) if needs[2] and bias is not None else None,
        )

    def add_chunk(self, dlogits: Tensor, rows: slice, hidden: Tensor, weight: Tensor) -> None:
        if self.hidden is not None:
            torch.mm(dlogits.to(weight.dtype), weight, out=self.hidden[rows])
        self.add_weight_chunk(dlogits, rows, hidden)

    def add_weight_chunk(self, dlogits: Tensor, rows: slice, hidden: Tensor) -> None:
        if self.weight is not None:
            grad = dlogits.to(hidden.dtype)
            if grad.dtype == self.weight.dtype:
                self.weight.addmm_(grad.T, hidden[rows])
            else:  # half types: each chunk's product is summed in float32
                self.weight += torch.mm(grad.T, hidden[rows])
        if self.bias is not None:
            self.bias += dlogits.sum(0)

    def in_dtypes_of(
        self, weight: Tensor, bias: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return (
            self.hidden,
            None if self.weight is None else self.weight.to(weight.dtype),
            None if self.bias is None or bias is None else self.bias.to(bias.dtype),
        )


def _logits(hidden_rows: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A chunk of logits as the model's head computes them, upcast for the softmax."""
    return F.linear(hidden_rows, weight, bias).to(compute_dtype(hidden_rows.dtype))


def _softmax_(logits: Tensor) -> Tensor:
    """Turn a chunk of logits into probabilities in place; return each row's log-sum-exp."""
    top = logits.amax(1, keepdim=True)
    total = logits.sub_(top).exp_().sum(1, keepdim=True)
    logits.div_(total)
    return (top + total.log()).squeeze(1)


def _one_pass(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, plan: _Plan, grads: _Gradients
) -> tuple[Tensor, Tensor]:
    """Per-token terms only: each chunk's value and logit gradient right after its logits."""
    loss = plan.loss_weights.new_zeros(())
    values = plan.loss_weights.new_zeros(len(plan.names))
    wants_grad = any(plan.needs_grad)
    for rows, _ in plan.chunks():
        logits = _logits(hidden[rows], weight, bias)
        targets = plan.rows.targets[rows].unsqueeze(1)
        target_logit = logits.gather(1, targets).squeeze(1)
        probs = logits
        ce = (_softmax_(probs) - target_logit).requires_grad_(wants_grad)
        with torch.enable_grad():
            chunk_loss, chunk_values = plan.chunk_loss(ce, rows)
        loss += chunk_loss.detach()
        values += chunk_values.detach()
        if wants_grad:
            (d_ce,) = torch.autograd.grad(chunk_loss, ce, materialize_grads=True)
            d_ce = d_ce.unsqueeze(1)
            dlogits = probs.mul_(d_ce).scatter_add_(1, targets, -d_ce)
            grads.add_chunk(dlogits, rows, hidden, weight)
    return loss, values


def _two_passes(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, plan: _Plan, grads: _Gradients
) -> tuple[Tensor, Tensor]:
    """Set terms: gather the statistics, take the loss's gradient in them, then back-propagate.

    The hidden gradient needs no second pass: a row's logit gradient is ``g_lse * p`` plus
    sparse terms, so its hidden gradient is ``g_lse * (p @ W)`` plus a few weight rows, and
    ``p @ W`` is taken in the first pass. Only the weight's gradient (a sum of outer products
    over rows) needs each chunk's softmax again.
    """
    pairs = plan.pairs
    assert pairs is not None
    targets = plan.rows.targets
    new = plan.loss_weights.new_empty
    log_normalizer, target_logit = new(targets.shape[0]), new(targets.shape[0])
    pair_block = new(pairs.rows.shape[0], pairs.group_classes.shape[1])
    expected_row = new(hidden.shape) if grads.hidden is not None else None
    for rows, answers in plan.chunks():
        logits = _logits(hidden[rows], weight, bias)
        target_logit[rows] = logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1)
        pair_block[answers] = logits[pairs.columns(rows, answers)]
        log_normalizer[rows] = _softmax_(logits)
        if expected_row is not None:
            expected_row[rows] = torch.mm(logits.to(weight.dtype), weight)

    statistics = (log_normalizer, target_logit, pair_block)
    wants_grad = any(plan.needs_grad)
    with torch.enable_grad():
        for statistic in statistics:
            statistic.requires_grad_(wants_grad)
        loss, values = plan.total_loss(*statistics)
    if not wants_grad:
        return loss, values
    g_lse, g_target, g_pairs = torch.autograd.grad(loss, statistics, materialize_grads=True)
    if grads.hidden is not None and expected_row is not None:
        expected_row.mul_(g_lse.unsqueeze(1))
        expected_row += g_target.unsqueeze(1) * weight[targets]
        for group, answers in enumerate(pairs.group_answers()):
            classes = weight[pairs.group_classes[group]].to(g_pairs.dtype)
            expected_row.index_add_(0, pairs.rows[answers], g_pairs[answers] @ classes)
        grads.hidden.copy_(expected_row)
    if grads.weight is None and grads.bias is None:
        return loss.detach(), values.detach()
    for rows, answers in plan.chunks():
        probs = _logits(hidden[rows], weight, bias)
        _softmax_(probs)
        dlogits = probs.mul_(g_lse[rows].unsqueeze(1))
        dlogits.scatter_add_(1, targets[rows].unsqueeze(1), g_target[rows].unsqueeze(1))
        dlogits.index_put_(pairs.columns(rows, answers), g_pairs[answers], accumulate=True)
        grads.add_weight_chunk(dlogits, rows, hidden)
    return loss.detach(), values.detach()


class _FusedObjective(torch.autograd.Function):
    """Loss and term values from hidden rows ``[n, H]``; gradients are computed in the forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        plan: _Plan,
    ) -> tuple[Tensor, Tensor]:
        grads = _Gradients.zeros(hidden, weight, bias, plan.needs_grad)
        run = _one_pass if plan.pairs is None else _two_passes
        loss, values = run(hidden, weight, bias, plan, grads)
        ctx.grads = grads.in_dtypes_of(weight, bias)  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(values)
        return loss, values

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: Tensor, _grad_values: Tensor
    ) -> tuple[Tensor | None, ...]:
        grads = ctx.grads  # type: ignore[attr-defined]
        if grads is None:
            raise RuntimeError(
                "fused_objective_loss computes its gradients once, in the forward: "
                "backward through it a second time (retain_graph) is not supported"
            )
        ctx.grads = None  # type: ignore[attr-defined]
        return (*(None if grad is None else grad.mul_(grad_loss) for grad in grads), None)


def _check_inputs(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    bias: Tensor | None,
    chunk_size: int,
) -> None:
    if hidden.dim() != 3 or tuple(labels.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"expected hidden [B, T, H] and labels [B, T]; got {tuple(hidden.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"weight must be [V, H] with H = {hidden.shape[2]} (the hidden size); "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _loss_weights(
    objective: Objective,
    rows: SelectedRows,
    num_items_in_batch: int | float | Tensor | ItemCounts | None,
    dtype: torch.dtype,
) -> Tensor:
    weights = torch.zeros(len(objective.weights), dtype=dtype, device=rows.index.device)
    for i, (name, weight) in enumerate(objective.weights.items()):
        share = objective.term_share(name, num_items_in_batch, rows.counts, dtype)
        weights[i] = torch.as_tensor(share, dtype=dtype) * weight
    return weights


def fused_objective_loss(
    objective: Objective,
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    answer_mask: Tensor | None = None,
    num_items_in_batch: int | float | Tensor | ItemCounts | None = None,
    bias: Tensor | None = None,
    chunk_size: int | None = None,
) -> ObjectiveOutput:
    """``objective(F.linear(hidden, weight, bias), labels, ...)`` without B x T x V logits.

    ``hidden`` ``[B, T, H]`` are the final hidden states (after the last norm), ``weight``
    ``[V, H]`` and ``bias`` ``[V]`` the output layer; ``labels``, ``answer_mask`` and
    ``num_items_in_batch`` mean what they mean for ``Objective.__call__`` (labels unshifted).
    At most ``chunk_size`` rows of logits (default: ``default_chunk_size(V)``) exist at once.
    """
    vocab = weight.shape[0]
    chunk_size = default_chunk_size(vocab) if chunk_size is None else chunk_size
    _check_inputs(hidden, weight, labels, bias, chunk_size)
    rows = objective.select_rows(labels, answer_mask)
    check_targets(rows.targets, vocab, objective.ignore_index)
    flat = hidden.reshape(-1, hidden.shape[-1])
    # Advanced indexing, not index_select: on CPU the latter is several times slower for wide
    # rows, forward and backward.
    hidden_rows = flat if rows.index.numel() == flat.shape[0] else flat[rows.index]
    grad_enabled = torch.is_grad_enabled()
    uses_set_term = bool(objective.set_terms) and bool(rows.in_answer.any())
    names = list(objective.weights)
    every_row = rows.in_answer.new_tensor(rows.index.shape[0], dtype=torch.long)
    rows_per_term = [
        every_row if objective.scope(name) == "all" else rows.in_answer.sum() for name in names
    ]
    plan = _Plan(
        objective,
        names,
        _loss_weights(objective, rows, num_items_in_batch, compute_dtype(hidden.dtype)),
        torch.stack(rows_per_term),
        rows,
        _pair_columns(rows, objective.group, labels.shape[1], vocab) if uses_set_term else None,
        chunk_size,
        (
            grad_enabled and hidden.requires_grad,
            grad_enabled and weight.requires_grad,
            grad_enabled and bias is not None and bias.requires_grad,
        ),
    )
    inputs = _autocast(hidden_rows, weight, bias)
    with torch.autocast(hidden.device.type, enabled=False):
        loss, values = _FusedObjective.apply(*inputs, plan)
    return ObjectiveOutput(loss, dict(zip(plan.names, values, strict=True)))


def _autocast(
    hidden: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Under autocast, the inputs in the dtype autocast would give the head's matmul.

    Autocast cannot see inside the function (its gradient matmuls take ``out=`` or mix
    dtypes), so the function runs with autocast off on inputs cast as autocast would cast them.
    """
    device_type = hidden.device.type
    if not torch.is_autocast_enabled(device_type):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
