"""Token cross-entropy, the reference every other loss is measured against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._tokens import connected_zero, select_valid


def token_cross_entropy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row cross-entropy and log-sum-exp of ``[n, V]`` logits (all rows valid).

    Returning the log-sum-exp lets the set losses reuse it instead of a second pass over V.
    """
    log_normalizer = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return log_normalizer - target_logit, log_normalizer


def cross_entropy_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean token cross-entropy over positions whose target is not ``ignore_index``."""
    tokens = select_valid(logits, targets, ignore_index, "batch")
    if tokens.targets.numel() == 0:
        return connected_zero(logits)
    return token_cross_entropy(tokens.logits, tokens.targets)[0].mean()


class CrossEntropyLoss(nn.Module):
    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy_loss(logits, targets, self.ignore_index)
