"""Lovász-Softmax (Berman et al. 2018): the convex surrogate of 1 - IoU, per present class."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seglm.choices import check_choice

from ._present import PresentClassProbs, valid_present_class_probs
from ._tokens import GROUPS, connected_zero, per_group_mean


def lovasz_from_probs(present: PresentClassProbs) -> Tensor:
    """Lovász-Softmax from present-class probabilities: mean over classes, then over groups.

    Every (group, class) row is sorted in one ``sort`` call. Padding gets error -1, so it sorts
    last, cannot change the Jaccard increments of real positions, and is clamped to 0 after.
    """
    layout = present.layout
    errors = torch.where(layout.foreground, 1 - present.probs, present.probs)
    errors_sorted, order = errors.masked_fill(~layout.real, -1.0).sort(dim=1, descending=True)
    with torch.no_grad():
        # After j sorted positions of which F are foreground, the Jaccard loss of the class is
        # 1 - (n - F) / (n + j - F) = j / (n + j - F); its increments weight the errors.
        foreground_sorted = layout.foreground.gather(1, order).to(errors.dtype)
        total = layout.pair_count.to(errors.dtype).unsqueeze(1)
        position = torch.arange(1, errors.shape[1] + 1, dtype=errors.dtype, device=errors.device)
        jaccard = position / (total + position - foreground_sorted.cumsum(1))
        increments = torch.diff(jaccard, dim=1, prepend=jaccard.new_zeros(jaccard.shape[0], 1))
    per_class = (errors_sorted.clamp_min(0) * increments).sum(1)
    return per_group_mean(per_class, layout.pair_group, layout.num_groups)


def lovasz_softmax_loss(
    logits: Tensor, targets: Tensor, group: str = "batch", ignore_index: int = -100
) -> Tensor:
    """Lovász-Softmax over the classes present in each group's targets."""
    check_choice("group", group, GROUPS)
    present = valid_present_class_probs(logits, targets, ignore_index, group)
    if present is None:
        return connected_zero(logits)
    return lovasz_from_probs(present)


class LovaszSoftmaxLoss(nn.Module):
    def __init__(self, group: str = "batch", ignore_index: int = -100) -> None:
        super().__init__()
        self.group, self.ignore_index = group, ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return lovasz_softmax_loss(logits, targets, self.group, self.ignore_index)
