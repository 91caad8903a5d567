"""Generalized Dice (Sudre et al. 2017) over the classes present in a group of answer tokens.

Per group: w_c = 1 / n_c^2 (``square``; ``simple``: 1 / n_c; ``uniform``: 1), with n_c the
group's count of class c; I = sum_c w_c sum_i p_ic g_ic, U = sum_c w_c sum_i (p_ic + g_ic);
GDL = 1 - 2 (I + s) / (U + s), averaged over groups. ``absent`` decides what probability mass
on classes absent from the group costs: ``present`` nothing, ``max`` the group's largest
present-class weight (MONAI), ``paper`` the research code's weight 1/(0 + 1e-10)^2 = 1e20, which
drowns the loss (GDL ~ 1, gradient ~ 0: "CE + GDice" there trained as CE alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seglm.choices import check_choice

from .registry import LossTerm, Option, register

if TYPE_CHECKING:
    from torch import Tensor

    from ._present import PresentClassProbs

WEIGHTINGS: tuple[str, ...] = ("square", "simple", "uniform")
ABSENT_POLICIES: tuple[str, ...] = ("present", "max", "paper")
# The research code's 1/(n + 1e-10)^2 gives an absent class the weight 1e20.
_PAPER_EPS = 1e-10


def _class_weights(counts: Tensor, weighting: str) -> Tensor:
    if weighting == "square":
        return counts.reciprocal().square()
    if weighting == "simple":
        return counts.reciprocal()
    return counts.new_ones(counts.shape)


def generalized_dice(
    present: PresentClassProbs, weighting: str, absent: str, smooth: float
) -> Tensor:
    """GDL per group from present-class probabilities, averaged over groups.

    Absent mass is 1 - (present mass) per position, so masses below the compute dtype's
    resolution (~1e-7 in float32) count as 0; that only matters under ``paper``'s 1e20 weight.
    """
    import torch

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


GENERALIZED_DICE = register(
    LossTerm(
        name="gdice",
        kind="set",
        summary="generalized dice 1 - 2(I + s)/(U + s) over the answer's present classes",
        compute=generalized_dice,
        options={
            "weighting": Option("square", "class weights: 1/n^2, 1/n or 1", choices=WEIGHTINGS),
            "absent": Option(
                "present",
                "absent classes: present (ignored), max (MONAI) or paper (weight 1e20)",
                choices=ABSENT_POLICIES,
            ),
            "smooth": Option(1e-5, "smoothing s added to I and U", ge=0),
        },
        aliases=("generalized_dice",),
        reference="Sudre et al. 2017, arXiv 1707.03237",
    )
)
