"""Per-row statistics of selected logit rows, with one gradient buffer in backward.

Every loss here is a function of three things: each row's log-sum-exp, each row's target logit
(CE = lse - target logit) and, for the set losses, the logits of the classes present in the row's
group. ``row_statistics`` reads only the rows it is given (ignored rows are never touched, so
their values cannot leak, even inf or NaN), in chunks so no full float32 copy of half-precision
logits is made, and its backward writes the whole gradient into one buffer: softmax times the
upstream scale, minus the target one-hot term, plus the present-class terms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._tokens import compute_dtype

# Rows per chunk are chosen so that one chunk holds about this many logits (128 MiB in fp32).
CHUNK_ELEMENTS = 1 << 25


def chunks(n: int, vocab: int) -> list[slice]:
    """Slices of ``n`` rows, each holding about ``CHUNK_ELEMENTS`` logits."""
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return [slice(start, start + step) for start in range(0, n, step)]


def _gather_pairs(logits: Tensor, pair_rows: Tensor, pair_classes: Tensor) -> Tensor:
    """``logits[pair_rows, pair_classes]``, read position-major so each read stays in one row."""
    pair_rows, pair_classes = torch.broadcast_tensors(pair_rows, pair_classes)
    return logits[pair_rows.t(), pair_classes.t()].t()


class _RowStatistics(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        rows: Tensor,
        targets: Tensor,
        pair_rows: Tensor,
        pair_classes: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = compute_dtype(logits.dtype)
        all_rows = rows.shape[0] == logits.shape[0]
        log_normalizer = torch.empty(rows.shape[0], dtype=dtype, device=logits.device)
        target_logit = logits[rows, targets].to(dtype)
        for chunk in chunks(rows.shape[0], logits.shape[1]):
            block = logits[chunk] if all_rows else logits.index_select(0, rows[chunk])
            # torch's fused log_softmax is several times faster on CPU than logsumexp;
            # lse = x_target - log_softmax(x)_target.
            target_log_prob = torch.log_softmax(block.to(dtype), dim=-1).gather(
                1, targets[chunk, None]
            )
            log_normalizer[chunk] = target_logit[chunk] - target_log_prob.squeeze(1)
        pair_logits = _gather_pairs(logits, pair_rows, pair_classes).to(dtype)
        ctx.save_for_backward(logits, rows, targets, pair_rows, pair_classes, log_normalizer)
        ctx.all_rows = all_rows
        return log_normalizer - target_logit, log_normalizer, pair_logits

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_ce: Tensor, grad_lse: Tensor, grad_pairs: Tensor
    ) -> tuple[Tensor, None, None, None, None]:
        logits, rows, targets, pair_rows, pair_classes, log_normalizer = ctx.saved_tensors
        dtype = log_normalizer.dtype
        # Every row is overwritten when all rows are selected: no need to zero the buffer.
        grad = torch.empty_like(logits) if ctx.all_rows else torch.zeros_like(logits)
        row_scale = (grad_ce + grad_lse).unsqueeze(1)  # d lse / d x = softmax
        in_place = ctx.all_rows and logits.dtype == dtype
        for chunk in chunks(rows.shape[0], logits.shape[1]):
            if in_place:
                block = torch.sub(logits[chunk], log_normalizer[chunk, None], out=grad[chunk])
            else:
                source = logits[chunk] if ctx.all_rows else logits.index_select(0, rows[chunk])
                block = source.to(dtype) - log_normalizer[chunk, None]
            block.exp_().mul_(row_scale[chunk])
            block.scatter_add_(1, targets[chunk, None], -grad_ce[chunk, None])
            if not in_place:
                if ctx.all_rows:
                    grad[chunk] = block
                else:
                    grad.index_copy_(0, rows[chunk], block.to(grad.dtype))
        if pair_rows.numel():
            pair_rows, pair_classes = torch.broadcast_tensors(pair_rows, pair_classes)
            grad.index_put_(
                (pair_rows.t(), pair_classes.t()), grad_pairs.t().to(grad.dtype), accumulate=True
            )
        return grad, None, None, None, None


def row_statistics(
    logits: Tensor,
    rows: Tensor,
    targets: Tensor,
    pair_rows: Tensor | None = None,
    pair_classes: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """CE, log-sum-exp of ``logits[rows]`` and ``logits[pair_rows, pair_classes]``.

    ``logits`` is ``[M, V]`` (any float dtype); ``rows`` and ``targets`` are ``[n]``; the pair
    indices broadcast together (e.g. ``[K, T]`` and ``[K, 1]``). Results are in the compute dtype.
    """
    if pair_rows is None or pair_classes is None:
        pair_rows = pair_classes = rows.new_zeros((0,))
    return _RowStatistics.apply(logits, rows, targets, pair_rows, pair_classes)
