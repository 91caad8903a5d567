"""Dice losses: Self-Adjusting Dice (Li et al. 2020) and Generalized Dice (Sudre et al. 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seglm.choices import check_choice

from ._present import PresentClassProbs, valid_present_class_probs
from ._tokens import GROUPS, connected_zero
from .cross_entropy import target_complement, token_mean, valid_token_cross_entropy

WEIGHTINGS: tuple[str, ...] = ("square", "simple", "uniform")
ABSENT_POLICIES: tuple[str, ...] = ("present", "max", "paper")
# The research code's 1/(n + 1e-10)^2 gives an absent class the weight 1e20 (SPEC section 2).
_PAPER_EPS = 1e-10


def self_adjusting_dice_from_cross_entropy(ce: Tensor, alpha: float, gamma: float) -> Tensor:
    """SADL per token: p~ = (1 - p_t)^alpha p_t, loss = 1 - (2 p~ + gamma) / (p~ + 1 + gamma).

    Note the shape of this published form: with alpha > 0, p~ -> 0 both when p_t -> 0 and when
    p_t -> 1, so on its own the loss is *not* minimised by a confident correct prediction (for
    alpha = 1 it is smallest at p_t = 1/2). It is meant to be mixed with CE.
    """
    if alpha < 0 or gamma < 0:
        raise ValueError(
            f"self-adjusting dice needs alpha >= 0 and gamma >= 0, got {alpha}, {gamma}"
        )
    p_t = torch.exp(-ce)
    p_tilde = target_complement(ce).pow(alpha) * p_t if alpha else p_t
    return 1 - (2 * p_tilde + gamma) / (p_tilde + 1 + gamma)


def self_adjusting_dice_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 1.0,
    gamma: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Mean self-adjusting dice loss over positions whose target is not ``ignore_index``."""
    ce = valid_token_cross_entropy(logits, targets, ignore_index)
    return token_mean(self_adjusting_dice_from_cross_entropy(ce, alpha, gamma))


def _class_weights(counts: Tensor, weighting: str) -> Tensor:
    if weighting == "square":
        return counts.reciprocal().square()
    if weighting == "simple":
        return counts.reciprocal()
    return torch.ones_like(counts)


def generalized_dice_from_probs(
    present: PresentClassProbs, weighting: str, absent: str, smooth: float
) -> Tensor:
    """GDL per group from present-class probabilities, averaged over groups.

    I = sum_c w_c sum_i p_ic g_ic and U = sum_c w_c sum_i (p_ic + g_ic), over present classes;
    ``absent`` decides what the probability mass on classes absent from a group costs:
    ``present`` nothing, ``max`` the group's largest present-class weight (MONAI), ``paper`` the
    research code's weight 1/(0 + 1e-10)^w (which drowns the loss: GDL ~ 1, gradient ~ 0).
    Absent mass is 1 - (present mass) per position, so masses below the compute dtype's
    resolution (~1e-7 in float32) count as 0; that only matters under ``paper``'s 1e20 weight.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("absent", absent, ABSENT_POLICIES)
    layout = present.layout
    counts = layout.pair_count.to(present.probs.dtype)
    weights = _class_weights(counts, weighting)
    groups, pair_group = layout.num_groups, layout.pair_group
    prob_sum = present.probs.sum(1)
    true_positive = (present.probs * layout.foreground).sum(1)

    intersection = torch.zeros(groups, dtype=counts.dtype, device=counts.device)
    intersection = intersection.index_add(0, pair_group, weights * true_positive)
    union = torch.zeros_like(intersection).index_add(0, pair_group, weights * (prob_sum + counts))
    if absent != "present":
        # Mass on absent classes, per position: 1 - sum over the group's present classes.
        present_mass = torch.zeros(
            groups, present.probs.shape[1], dtype=counts.dtype, device=counts.device
        ).index_add(0, pair_group, present.probs)
        width = present.probs.shape[1]
        positions = torch.arange(width, device=counts.device)
        real_positions = positions < layout.group_size.unsqueeze(1)
        absent_mass = ((1 - present_mass).clamp_min(0) * real_positions).sum(1)
        # With every class present, 1 - sum(present p) is rounding residue, not mass.
        classes_in_group = torch.bincount(pair_group, minlength=groups)
        absent_mass = absent_mass.masked_fill(classes_in_group == layout.vocab, 0)
        if absent == "max":
            absent_weight = torch.zeros_like(intersection).scatter_reduce(
                0, pair_group, weights, "amax", include_self=False
            )
        else:
            absent_weight = _class_weights(torch.full_like(intersection, _PAPER_EPS), weighting)
        union = union + absent_weight * absent_mass
    loss = 1 - 2 * (intersection + smooth) / (union + smooth)
    return loss.mean()


def generalized_dice_loss(
    logits: Tensor,
    targets: Tensor,
    weighting: str = "square",
    absent: str = "present",
    group: str = "batch",
    smooth: float = 1e-5,
    ignore_index: int = -100,
) -> Tensor:
    """Generalized Dice loss over the valid positions, one group per call or per sequence."""
    check_choice("group", group, GROUPS)
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("absent", absent, ABSENT_POLICIES)
    present = valid_present_class_probs(logits, targets, ignore_index, group)
    if present is None:
        return connected_zero(logits)
    return generalized_dice_from_probs(present, weighting, absent, smooth)


class SelfAdjustingDiceLoss(nn.Module):
    def __init__(self, alpha: float = 1.0, gamma: float = 1.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.alpha, self.gamma, self.ignore_index = alpha, gamma, ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self_adjusting_dice_loss(logits, targets, self.alpha, self.gamma, self.ignore_index)


class GeneralizedDiceLoss(nn.Module):
    def __init__(
        self,
        weighting: str = "square",
        absent: str = "present",
        group: str = "batch",
        smooth: float = 1e-5,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.weighting, self.absent, self.group = weighting, absent, group
        self.smooth, self.ignore_index = smooth, ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return generalized_dice_loss(
            logits, targets, self.weighting, self.absent, self.group, self.smooth, self.ignore_index
        )
