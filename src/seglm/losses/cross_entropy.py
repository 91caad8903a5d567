"""Token cross-entropy, the reference every other loss is measured against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._statistics import row_statistics
from ._tokens import select_valid


def valid_token_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """Per-token CE of the positions whose target is not ignored (``[n]``, maybe empty).

    An empty result is still attached to ``logits``, so its ``.sum()`` is a connected zero.
    """
    tokens = select_valid(logits, targets, ignore_index, "batch")
    return row_statistics(tokens.logits, tokens.rows, tokens.targets)[0]


def target_complement(ce: Tensor) -> Tensor:
    """1 - p_t from per-token CE, floored at the dtype's smallest normal number so that powers
    below 1 (focal gamma, SADL alpha) keep a finite gradient where p_t rounds to 1."""
    return (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)


def token_mean(values: Tensor) -> Tensor:
    """Mean over tokens; 0 (still connected to the graph) when there are none."""
    return values.mean() if values.numel() else values.sum()


def cross_entropy_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean token cross-entropy over positions whose target is not ``ignore_index``."""
    return token_mean(valid_token_cross_entropy(logits, targets, ignore_index))


class CrossEntropyLoss(nn.Module):
    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy_loss(logits, targets, self.ignore_index)
