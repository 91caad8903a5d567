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

The gradients are held in float32 until the backward has multiplied them by the incoming gradient
(fp16 training's loss scale) and only then cast to the inputs' dtypes: an unscaled gradient's
small entries would otherwise flush to zero in fp16 before the scale could lift them. The weight's
gradient sums each chunk's product in float32. The output layer may come in column blocks (a
frozen weight and LoRA adapters): only the blocks that train get a weight gradient.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
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
from .registry import LossTerm

# Default rows per chunk: about this many float32 logits (256 MiB) in a chunk, whatever the
# number of tokens, so the memory of the loss depends on the vocabulary only.
CHUNK_VALUES = 2**26
# Chunks are a multiple of this many rows where that many fit: a GPU's matmul tiles are 64 or 128
# rows, and 441 rows (V = 151936) would end each chunk with a mostly empty tile.
ROW_TILE = 128
# fp16 is normal only from 6.1e-5 on: values of at most 1 in size (probabilities, the softmax
# minus the target) are multiplied by this power of two before they are rounded to fp16 for a
# product with the weight, so entries down to ~2e-10 keep their value; the product stays below
# fp16's largest value while the weight's entries are below 128 in size.
FP16_PRODUCT_SCALE = 2.0**8


def default_chunk_size(vocab: int) -> int:
    rows = max(1, CHUNK_VALUES // vocab)
    return rows if rows < ROW_TILE else rows - rows % ROW_TILE


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
    needs_grad: tuple[bool, ...]  # each hidden block, each weight block, the bias
    reference: _Head | None = None  # the reference model's head input, for terms that use it

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
        self, ce: Tensor, rows: slice, present: PresentClassProbs | None, extras: _RowExtras
    ) -> Tensor:
        """Each term's contribution from ``rows`` (``ce`` and ``extras`` are theirs): a per-token
        term's sum over the rows of its scope divided by all the rows it averages over (masked,
        not indexed: no device sync), a set term's value (``present``: of every answer row)."""
        in_answer = self.rows.in_answer[rows]
        values = []
        for index, name in enumerate(self.names):
            loss = self.objective.loss(name)
            if loss.is_set:  # without answer rows here, the masked CE sums to a connected 0
                masked = torch.where(in_answer, ce, 0.0)
                values.append(self.objective.term_value(name, masked, present))
                continue
            options = self.objective.options[name]
            per_token = loss.compute(ce, **extras.for_term(name, loss), **options)
            if self.objective.scope(name) == "answer":
                per_token = torch.where(in_answer, per_token, 0.0)
            values.append(per_token.sum() / self.rows_per_term[index].clamp_min(1))
        return torch.stack(values)

    def weighted(self, values: Tensor) -> Tensor:
        return (values * self.loss_weights).sum()


@dataclass
class _RowExtras:
    """What some per-token terms read besides CE, for the rows at hand: each term's detached
    row statistic (EAFT's entropy weight) and the KL to the reference model (ASFT)."""

    statistics: dict[str, Tensor]
    kl: Tensor | None = None

    def for_term(self, name: str, loss: LossTerm) -> dict[str, Tensor]:
        extra = {}
        if loss.row_statistic is not None:
            extra["statistic"] = self.statistics[name]
        if loss.uses_reference:
            assert self.kl is not None
            extra["kl"] = self.kl
        return extra


def _row_statistics(plan: _Plan, logits: Tensor) -> dict[str, Tensor]:
    """Each term's detached statistic of a chunk's logit rows (before the in-place softmax)."""
    found = {}
    with torch.no_grad():
        for name in plan.names:
            compute = plan.objective.loss(name).row_statistic
            if compute is not None:
                found[name] = compute(logits, **plan.objective.options[name])
    return found


def _reference_terms(reference: _Head, rows: slice, logits: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's probabilities q of a chunk's rows and sum_v q_v (log q_v - x_v) for the
    model's logits x (before the in-place softmax): KL(q || p) is that plus lse(x)."""
    with torch.no_grad():
        log_q = reference.logits(rows).log_softmax(1)
        q = log_q.exp()
        return q, (q * (log_q - logits)).sum(1)


@dataclass
class _Head:
    """The output layer in column blocks: ``logits = sum_i hidden[i] @ weight[i]^T + bias``."""

    hidden: list[Tensor]  # [n, H_i] the rows some term uses
    weight: list[Tensor]  # [V, H_i]
    bias: Tensor | None  # [V]

    def logits(self, rows: slice) -> Tensor:
        """A chunk of logits as the model's head computes them, upcast for the softmax: the
        blocks' products are summed in their dtype (as a PEFT LoRA layer sums them), each added
        in place where the dtypes agree, so no second chunk of logits exists."""
        logits = F.linear(self.hidden[0][rows], self.weight[0], self.bias)
        for hidden, weight in zip(self.hidden[1:], self.weight[1:], strict=True):
            if weight.dtype == logits.dtype:
                logits.addmm_(hidden[rows], weight.T)
            else:
                logits = logits + F.linear(hidden[rows], weight)
        return logits.to(compute_dtype(logits.dtype))


@dataclass
class _Gradients:
    """Gradients filled chunk by chunk, in float32 (float64 for float64 inputs) whatever the
    inputs' dtypes; ``scaled_in_dtypes`` casts them once the loss scale multiplies them."""

    hidden: list[Tensor | None]  # [n, H_i] per block
    weight: list[Tensor | None]  # [V, H_i] per block
    bias: Tensor | None  # [V]

    @classmethod
    def zeros(cls, head: _Head, needs: tuple[bool, ...]) -> _Gradients:
        blocks = len(head.hidden)

        def zeros(tensor: Tensor, needed: bool) -> Tensor | None:
            return torch.zeros_like(tensor, dtype=compute_dtype(tensor.dtype)) if needed else None

        return cls(
            [zeros(h, need) for h, need in zip(head.hidden, needs[:blocks], strict=True)],
            [zeros(w, need) for w, need in zip(head.weight, needs[blocks:-1], strict=True)],
            None if head.bias is None else zeros(head.bias, needs[-1]),
        )

    def set_hidden(self, head: _Head, rows: slice, values: Tensor, row_factor: Tensor) -> None:
        """Each hidden block's gradient rows: ``row_factor * (values @ weight)``, where the
        entries of ``values`` (a chunk, float32) are at most 1 in size."""
        operands: dict[torch.dtype, tuple[Tensor, float]] = {}
        for grad, weight in zip(self.hidden, head.weight, strict=True):
            if grad is None:
                continue
            if weight.dtype not in operands:
                operands[weight.dtype] = _product_operand(values, weight.dtype)
            operand, scale = operands[weight.dtype]
            torch.mul(torch.mm(operand, weight), row_factor / scale, out=grad[rows])

    def needs_weight(self) -> bool:
        return self.bias is not None or any(grad is not None for grad in self.weight)

    def add_weight(self, head: _Head, rows: slice, dlogits: Tensor) -> None:
        """Add a chunk's logit gradient's share to the trained weight blocks and the bias."""
        for grad, hidden in zip(self.weight, head.hidden, strict=True):
            if grad is not None:
                _add_product(grad, dlogits.T, hidden[rows])
        if self.bias is not None:
            self.bias += dlogits.sum(0)

    def scaled_in_dtypes(
        self, scale: Tensor, dtypes: list[torch.dtype | None]
    ) -> list[Tensor | None]:
        """``scale`` times each gradient (bias, hidden blocks, weight blocks), then cast to its
        input's dtype."""
        grads = [self.bias, *self.hidden, *self.weight]
        return [
            None if grad is None or dtype is None else grad.mul_(scale).to(dtype)
            for grad, dtype in zip(grads, dtypes, strict=True)
        ]


def _product_operand(values: Tensor, dtype: torch.dtype) -> tuple[Tensor, float]:
    """``values`` (entries at most 1 in size) for a product in ``dtype``, and the factor they
    were multiplied by to stay in its range."""
    if dtype == values.dtype:
        return values, 1.0
    if dtype != torch.float16:
        return values.to(dtype), 1.0
    operand = torch.empty_like(values, dtype=dtype)
    return torch.mul(values, FP16_PRODUCT_SCALE, out=operand), FP16_PRODUCT_SCALE


def _add_product(total: Tensor, left: Tensor, right: Tensor) -> None:
    """``total += left @ right`` for a float32 ``total`` and float32 ``left``, without rounding
    the product to ``right``'s half dtype first (as TRL's chunked log-probabilities do): on CUDA
    a bf16 product written to float32 (``out_dtype``, torch >= 2.8), else a float32 product. An
    fp16 ``left`` would flush an unscaled gradient's small entries, so fp16 takes float32."""
    if right.dtype == total.dtype:
        total.addmm_(left, right)
    elif right.dtype == torch.bfloat16 and _sums_half_products_in_float32(right.device):
        torch.addmm(total, left.to(right.dtype), right, out_dtype=total.dtype, out=total)
    else:
        total.addmm_(left, right.to(total.dtype))


@functools.cache
def _sums_half_products_in_float32(device: torch.device) -> bool:
    """Whether ``torch.addmm`` adds a bf16 product to a float32 tensor on this device (CUDA
    since torch 2.8; not on CPU). Tried once per device on a 1 x 1 product."""
    if device.type != "cuda":
        return False
    total = torch.ones(1, 1, device=device)
    factor = torch.full((1, 1), 3.0, dtype=torch.bfloat16, device=device)
    try:
        torch.addmm(total, factor, factor, out_dtype=torch.float32, out=total)
    except (RuntimeError, TypeError):  # an older torch, or no such kernel
        return False
    return bool(total.item() == 10.0)


def _softmax_(logits: Tensor) -> Tensor:
    """Turn a chunk of logits into probabilities in place; return each row's log-sum-exp."""
    top = logits.amax(1, keepdim=True)
    total = logits.sub_(top).exp_().sum(1, keepdim=True)
    logits.div_(total)
    return (top + total.log()).squeeze(1)


def _one_pass(head: _Head, plan: _Plan, grads: _Gradients) -> tuple[Tensor, Tensor]:
    """Per-token terms only: each chunk's value and logit gradient right after its logits.

    A row's logit gradient is ``d_ce * (p - y)`` (y: the target's one-hot row), so its hidden
    gradient is ``d_ce * ((p - y) @ W)``: the product is taken on ``p - y``, whose entries are
    at most 1 in size, and ``d_ce`` multiplies it in float32 afterwards.
    """
    loss = plan.loss_weights.new_zeros(())
    values = plan.loss_weights.new_zeros(len(plan.names))
    wants_grad = any(plan.needs_grad)
    for rows, _ in plan.chunks():
        logits = head.logits(rows)
        targets = plan.rows.targets[rows].unsqueeze(1)
        target_logit = logits.gather(1, targets).squeeze(1)
        extras = _RowExtras(_row_statistics(plan, logits))
        if plan.reference is not None:
            q, cross = _reference_terms(plan.reference, rows, logits)
        probs = logits
        log_normalizer = _softmax_(probs)
        ce = (log_normalizer - target_logit).requires_grad_(wants_grad)
        if plan.reference is not None:
            extras.kl = (cross + log_normalizer).requires_grad_(wants_grad)
        with torch.enable_grad():
            chunk_values = plan.term_values(ce, rows, None, extras)
            chunk_loss = plan.weighted(chunk_values)
        loss += chunk_loss.detach()
        values += chunk_values.detach()
        if not wants_grad:
            continue
        if extras.kl is None:
            (d_ce,) = torch.autograd.grad(chunk_loss, ce, materialize_grads=True)
            d_ce = d_ce.unsqueeze(1)
            delta = probs.scatter_add_(1, targets, torch.full_like(d_ce, -1.0))
            grads.set_hidden(head, rows, delta, d_ce)
            if grads.needs_weight():
                grads.add_weight(head, rows, delta.mul_(d_ce))
            continue
        # With the KL to the reference: d_ce (p - y) + d_kl (p - q), each entry at most
        # |d_ce| + |d_kl| in size, so it is divided by that for the product with the weight.
        d_ce, d_kl = torch.autograd.grad(chunk_loss, (ce, extras.kl), materialize_grads=True)
        d_ce, d_kl = d_ce.unsqueeze(1), d_kl.unsqueeze(1)
        scale = (d_ce.abs() + d_kl.abs()).clamp_min(torch.finfo(probs.dtype).tiny)
        delta = probs.mul_(d_ce + d_kl).sub_(q.mul_(d_kl)).scatter_add_(1, targets, -d_ce)
        delta.div_(scale)
        grads.set_hidden(head, rows, delta, scale)
        if grads.needs_weight():
            grads.add_weight(head, rows, delta.mul_(scale))
    return loss, values


def _two_passes(head: _Head, plan: _Plan, grads: _Gradients) -> tuple[Tensor, Tensor]:
    """Set terms: gather the statistics, take the loss's gradient in them, then back-propagate.

    The hidden gradient needs no second pass: a row's logit gradient is ``g_lse * p`` plus
    sparse terms, so its hidden gradient is ``g_lse * (p @ W)`` plus a few weight rows, and
    ``p @ W`` is taken in the first pass (into the hidden gradient's buffer). Only the weight's
    gradient (a sum of outer products over rows) needs each chunk's softmax again.
    """
    pairs = plan.pairs
    assert pairs is not None
    targets = plan.rows.targets
    new = plan.loss_weights.new_empty
    log_normalizer, target_logit = new(targets.shape[0]), new(targets.shape[0])
    pair_block = new(pairs.rows.shape[0], pairs.group_classes.shape[1])
    row_statistics: dict[str, Tensor] = {}
    one = plan.loss_weights.new_ones(())
    for rows, answers in plan.chunks():
        logits = head.logits(rows)
        for name, statistic in _row_statistics(plan, logits).items():
            row_statistics.setdefault(name, new(targets.shape[0]))[rows] = statistic
        target_logit[rows] = logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1)
        pair_block[answers] = logits[pairs.columns(rows, answers)]
        log_normalizer[rows] = _softmax_(logits)
        grads.set_hidden(head, rows, logits, one)

    statistics = (log_normalizer, target_logit, pair_block)
    wants_grad = any(plan.needs_grad)
    with torch.enable_grad():
        for statistic in statistics:
            statistic.requires_grad_(wants_grad)
        present = pairs.probs(pair_block, log_normalizer)
        ce = log_normalizer - target_logit
        values = plan.term_values(ce, slice(None), present, _RowExtras(row_statistics))
        loss = plan.weighted(values)
    if not wants_grad:
        return loss, values
    g_lse, g_target, g_pairs = torch.autograd.grad(loss, statistics, materialize_grads=True)
    for expected_row, weight in zip(grads.hidden, head.weight, strict=True):
        if expected_row is None:
            continue
        expected_row.mul_(g_lse.unsqueeze(1))
        expected_row += g_target.unsqueeze(1) * weight[targets]
        for group, answers in enumerate(pairs.group_answers()):
            classes = weight[pairs.group_classes[group]].to(g_pairs.dtype)
            expected_row.index_add_(0, pairs.rows[answers], g_pairs[answers] @ classes)
    if not grads.needs_weight():
        return loss.detach(), values.detach()
    for rows, answers in plan.chunks():
        probs = head.logits(rows)
        _softmax_(probs)
        dlogits = probs.mul_(g_lse[rows].unsqueeze(1))
        dlogits.scatter_add_(1, targets[rows].unsqueeze(1), g_target[rows].unsqueeze(1))
        dlogits.index_put_(pairs.columns(rows, answers), g_pairs[answers], accumulate=True)
        grads.add_weight(head, rows, dlogits)
    return loss.detach(), values.detach()


class _FusedObjective(torch.autograd.Function):
    """Loss and term values from hidden rows ``[n, H_i]`` and weight blocks ``[V, H_i]`` (given
    as ``*hidden, *weight``); gradients are computed in the forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        plan: _Plan,
        bias: Tensor | None,
        *blocks: Tensor,
    ) -> tuple[Tensor, Tensor]:
        half = len(blocks) // 2
        head = _Head(list(blocks[:half]), list(blocks[half:]), bias)
        grads = _Gradients.zeros(head, plan.needs_grad)
        run = _one_pass if plan.pairs is None else _two_passes
        loss, values = run(head, plan, grads)
        ctx.grads = grads  # type: ignore[attr-defined]
        ctx.dtypes = [None if t is None else t.dtype for t in (bias, *blocks)]  # type: ignore[attr-defined]
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
        return None, *grads.scaled_in_dtypes(grad_loss, ctx.dtypes)  # type: ignore[attr-defined]


def _check_inputs(
    hidden: list[Tensor],
    weight: list[Tensor],
    labels: Tensor,
    bias: Tensor | None,
    chunk_size: int,
) -> None:
    if not hidden or len(hidden) != len(weight):
        raise ValueError(
            f"hidden and weight must be as many column blocks; got {len(hidden)} and {len(weight)}"
        )
    vocab = weight[0].shape[0] if weight[0].dim() == 2 else None
    for block, weight_block in zip(hidden, weight, strict=True):
        if block.dim() != 3 or tuple(labels.shape) != tuple(block.shape[:2]):
            raise ValueError(
                f"expected hidden [B, T, H] and labels [B, T]; got {tuple(block.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if (
            weight_block.dim() != 2
            or weight_block.shape[1] != block.shape[2]
            or weight_block.shape[0] != vocab
        ):
            raise ValueError(
                f"weight must be [V, H] with H = {block.shape[2]} (the hidden size) and the "
                f"same V in every block; got {tuple(weight_block.shape)}"
            )
    if bias is not None and tuple(bias.shape) != (vocab,):
        raise ValueError(f"bias must be [V] = [{vocab}], got {tuple(bias.shape)}")
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
    hidden: Tensor | Sequence[Tensor],
    weight: Tensor | Sequence[Tensor],
    labels: Tensor,
    answer_mask: Tensor | None = None,
    num_items_in_batch: int | float | Tensor | ItemCounts | None = None,
    bias: Tensor | None = None,
    chunk_size: int | None = None,
    reference: tuple[Tensor | Sequence[Tensor], Tensor | Sequence[Tensor], Tensor | None]
    | None = None,
) -> ObjectiveOutput:
    """``objective(F.linear(hidden, weight, bias), labels, ...)`` without B x T x V logits.

    ``hidden`` ``[B, T, H]`` are the final hidden states (after the last norm), ``weight``
    ``[V, H]`` and ``bias`` ``[V]`` the output layer; ``labels``, ``answer_mask`` and
    ``num_items_in_batch`` mean what they mean for ``Objective.__call__`` (labels unshifted).
    At most ``chunk_size`` rows of logits (default: ``default_chunk_size(V)``) exist at once.

    ``hidden`` and ``weight`` may also be as many column blocks ``[B, T, H_i]`` and ``[V, H_i]``,
    for the logits ``sum_i hidden_i @ weight_i^T + bias`` (a frozen weight and LoRA adapters'
    ``[V, r]`` up-projections): nothing is concatenated, and only the blocks that require a
    gradient get one. ``reference`` is a reference model's ``(hidden, weight, bias)`` in the same
    form, for terms that compare with one (ASFT): its logits are read chunk by chunk too.
    """
    hidden_blocks = [hidden] if isinstance(hidden, Tensor) else list(hidden)
    weight_blocks = [weight] if isinstance(weight, Tensor) else list(weight)
    vocab = weight_blocks[0].shape[0]
    chunk_size = default_chunk_size(vocab) if chunk_size is None else chunk_size
    _check_inputs(hidden_blocks, weight_blocks, labels, bias, chunk_size)
    rows = objective.select_rows(labels, answer_mask)
    check_targets(rows.targets, vocab, objective.ignore_index)
    hidden_rows = [_used_rows(block, rows.index) for block in hidden_blocks]
    grad_enabled = torch.is_grad_enabled()
    uses_set_term = bool(objective.set_terms) and bool(rows.in_answer.any())
    names = list(objective.weights)
    every_row = rows.in_answer.new_tensor(rows.index.shape[0], dtype=torch.long)
    rows_per_term = [
        every_row if objective.scope(name) == "all" else rows.in_answer.sum() for name in names
    ]
    dtype = compute_dtype(hidden_blocks[0].dtype)
    plan = _Plan(
        objective,
        names,
        _loss_weights(objective, rows, num_items_in_batch, dtype),
        torch.stack(rows_per_term),
        rows,
        _pair_columns(rows, objective.group, labels.shape[1], vocab) if uses_set_term else None,
        chunk_size,
        tuple(
            grad_enabled and tensor is not None and tensor.requires_grad
            for tensor in (*hidden_blocks, *weight_blocks, bias)
        ),
    )
    device_type = hidden_blocks[0].device.type
    plan.reference = _reference_head(objective, reference, rows, uses_set_term, device_type)
    bias, *blocks = _autocast(device_type, [bias, *hidden_rows, *weight_blocks])
    with torch.autocast(device_type, enabled=False):
        loss, values = _FusedObjective.apply(plan, bias, *blocks)
    return ObjectiveOutput(loss, dict(zip(plan.names, values, strict=True)))


def _reference_head(
    objective: Objective,
    reference: tuple[Tensor | Sequence[Tensor], Tensor | Sequence[Tensor], Tensor | None] | None,
    rows: SelectedRows,
    uses_set_term: bool,
    device_type: str,
) -> _Head | None:
    """The reference's head on the rows the terms use, or None when no term compares with it."""
    if not objective.uses_reference:
        return None
    if reference is None:
        raise ValueError(
            f"{objective.spec}: a term compares with a reference model; pass reference="
            "(hidden, weight, bias) of the reference's output layer"
        )
    if uses_set_term:
        raise ValueError(
            f"{objective.spec}: the fused path does not combine a reference term with a set "
            "loss; compute it on materialised logits (fused_loss=False)"
        )
    hidden, weight, bias = reference
    hidden_blocks = [hidden] if isinstance(hidden, Tensor) else list(hidden)
    weight_blocks = [weight] if isinstance(weight, Tensor) else list(weight)
    used = [_used_rows(block.detach(), rows.index) for block in hidden_blocks]
    bias, *blocks = _autocast(device_type, [bias, *used, *weight_blocks])
    half = len(blocks) // 2
    return _Head(blocks[:half], blocks[half:], bias)


def fused_path_problem(objective: Objective) -> str | None:
    """Why the fused path cannot compute ``objective``, or None."""
    if objective.uses_reference and objective.set_terms:
        return (
            "a term that compares with a reference model and a set loss in one objective are "
            "computed on materialised logits"
        )
    return None


def _used_rows(hidden: Tensor, index: Tensor) -> Tensor:
    flat = hidden.reshape(-1, hidden.shape[-1])
    # Advanced indexing, not index_select: on CPU the latter is several times slower for wide
    # rows, forward and backward.
    return flat if index.numel() == flat.shape[0] else flat[index]


def _autocast(device_type: str, inputs: list[Tensor | None]) -> list[Tensor | None]:
    """Under autocast, the inputs in the dtype autocast would give the head's matmul.

    Autocast cannot see inside the function (its gradient matmuls take ``out=`` or mix
    dtypes), so the function runs with autocast off on inputs cast as autocast would cast them.
    """
    if not torch.is_autocast_enabled(device_type):
        return inputs
    dtype = torch.get_autocast_dtype(device_type)
    return [None if tensor is None else tensor.to(dtype) for tensor in inputs]
