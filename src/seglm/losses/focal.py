"""Focal loss (Lin et al. 2017) for next-token prediction: FL = -(1 - p_t)^gamma log p_t."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._tokens import connected_zero, select_valid
from .cross_entropy import token_cross_entropy

# (1 - p_t) is floored here so that gamma < 1 keeps a finite gradient at p_t = 1; the loss value
# changes by at most 1e-12**gamma * ce, far below float32 resolution of any real loss.
_FLOOR = 1e-12


def focal_from_cross_entropy(ce: Tensor, gamma: float) -> Tensor:
    """Focal loss per token from per-token cross-entropy (p_t = exp(-ce)): costs what CE costs."""
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    if gamma == 0:
        return ce
    one_minus_pt = (-torch.expm1(-ce)).clamp_min(_FLOOR)
    return one_minus_pt.pow(gamma) * ce


def focal_loss(
    logits: Tensor, targets: Tensor, gamma: float = 2.0, ignore_index: int = -100
) -> Tensor:
    """Mean focal loss over positions whose target is not ``ignore_index``."""
    tokens = select_valid(logits, targets, ignore_index, "batch")
    if tokens.targets.numel() == 0:
        return connected_zero(logits)
    ce, _ = token_cross_entropy(tokens.logits, tokens.targets)
    return focal_from_cross_entropy(ce, gamma).mean()


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.gamma, self.ignore_index = gamma, ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(logits, targets, self.gamma, self.ignore_index)
