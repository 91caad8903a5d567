"""Lovász-Softmax (Berman et al. 2018): the convex surrogate of 1 - IoU, per present class.

For each class present in a group's targets, the errors |g_ic - p_ic| sorted in decreasing
order are weighted by the increments of the Jaccard loss along that order; the loss is the
mean over present classes, then over groups. Every (group, class) row is sorted in one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import LossTerm, register

if TYPE_CHECKING:
    from torch import Tensor

    from ._present import PresentClassProbs


def lovasz_softmax(present: PresentClassProbs) -> Tensor:
    """Padding gets error -1, so it sorts last, cannot change the Jaccard increments of real
    positions, and is clamped to 0 after."""
    import torch

    from ._tokens import per_group_mean

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


LOVASZ_SOFTMAX = register(
    LossTerm(
        name="lovasz",
        kind="set",
        summary="Lovász-Softmax, the convex surrogate of 1 - IoU over the answer's classes",
        compute=lovasz_softmax,
        aliases=("lovasz_softmax",),
        reference="Berman et al. 2018, arXiv 1705.08790",
    )
)
