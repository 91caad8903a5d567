"""Lovász-Softmax (Berman et al. 2018): the convex surrogate of 1 - IoU, per present class."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._present import PresentClassProbs, present_class_probs
from ._tokens import GROUPS, check_choice, connected_zero, per_group_mean, select_valid


def lovasz_from_probs(present: PresentClassProbs) -> Tensor:
    """Lovász-Softmax from present-class probabilities: mean over classes, then over groups.

    Every (group, class) row is sorted in one ``sort`` call; padding sorts last (error -1) and
    so cannot change the Jaccard increments of real positions.
    """
    errors = torch.where(present.foreground, 1 - present.probs, present.probs)
    errors = errors.masked_fill(~present.real, -1.0)
    errors_sorted, order = errors.sort(dim=1, descending=True)
    foreground_sorted = present.foreground.gather(1, order).to(errors.dtype)
    with torch.no_grad():
        total = present.pair_count.to(errors.dtype).unsqueeze(1)
        intersection = total - foreground_sorted.cumsum(1)
        union = total + (1 - foreground_sorted).cumsum(1)
        jaccard = 1 - intersection / union
        increments = torch.diff(jaccard, dim=1, prepend=torch.zeros_like(jaccard[:, :1]))
    real_sorted = present.real.gather(1, order)
    per_class = (errors_sorted * increments * real_sorted).sum(1)
    return per_group_mean(per_class, present.pair_group, present.num_groups)


def lovasz_softmax_loss(
    logits: Tensor, targets: Tensor, group: str = "batch", ignore_index: int = -100
) -> Tensor:
    """Lovász-Softmax over the classes present in each group's targets."""
    check_choice("group", group, GROUPS)
    tokens = select_valid(logits, targets, ignore_index, group)
    if tokens.targets.numel() == 0:
        return connected_zero(logits)
    log_normalizer = torch.logsumexp(tokens.logits, dim=-1)
    present = present_class_probs(
        tokens.logits, log_normalizer, tokens.targets, tokens.group_ids, tokens.num_groups
    )
    return lovasz_from_probs(present)


class LovaszSoftmaxLoss(nn.Module):
    def __init__(self, group: str = "batch", ignore_index: int = -100) -> None:
        super().__init__()
        self.group, self.ignore_index = group, ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return lovasz_softmax_loss(logits, targets, self.group, self.ignore_index)
