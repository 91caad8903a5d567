"""Dynamic Fine-Tuning (Wu et al. 2025, arXiv 2508.05629): DFT = -stopgrad(p_t) log p_t.

Each token's cross-entropy is weighted by the model's own probability of the target, detached,
so the gradient is ``p_t * dCE``: tokens the model already finds unlikely are pushed less than
with CE. The value lies in [0, 1/e] per token (the maximum of -p ln p is at p = 1/e).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .cross_entropy import token_mean, valid_token_cross_entropy


def dft_from_cross_entropy(ce: Tensor) -> Tensor:
    """DFT per token from per-token cross-entropy (p_t = exp(-ce)): costs what CE costs."""
    return torch.exp(-ce).detach() * ce


def dft_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean DFT over positions whose target is not ``ignore_index``."""
    return token_mean(
        dft_from_cross_entropy(valid_token_cross_entropy(logits, targets, ignore_index))
    )


class DFTLoss(nn.Module):
    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return dft_loss(logits, targets, self.ignore_index)
