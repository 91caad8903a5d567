"""Focal loss (Lin et al. 2017) for next-token prediction: FL = -(1 - p_t)^gamma log p_t."""

from __future__ import annotations

from torch import Tensor, nn

from .cross_entropy import target_complement, token_mean, valid_token_cross_entropy


def focal_from_cross_entropy(ce: Tensor, gamma: float) -> Tensor:
    """Focal loss per token from per-token cross-entropy (p_t = exp(-ce)): costs what CE costs."""
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    if gamma == 0:
        return ce
    return target_complement(ce).pow(gamma) * ce


def focal_loss(
    logits: Tensor, targets: Tensor, gamma: float = 2.0, ignore_index: int = -100
) -> Tensor:
    """Mean focal loss over positions whose target is not ``ignore_index``."""
    ce = valid_token_cross_entropy(logits, targets, ignore_index)
    return token_mean(focal_from_cross_entropy(ce, gamma))


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.gamma, self.ignore_index = gamma, ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(logits, targets, self.gamma, self.ignore_index)
