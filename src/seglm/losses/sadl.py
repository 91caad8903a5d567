"""Self-Adjusting Dice (Li et al. 2020) per token: p~ = (1 - p_t)^alpha p_t,
SADL = 1 - (2 p~ + gamma) / (p~ + 1 + gamma).

Note the shape of this published form: with alpha > 0, p~ -> 0 both when p_t -> 0 and when
p_t -> 1, so on its own the loss is *not* minimised by a confident correct prediction (for
alpha = 1 it is smallest at p_t = 1/2). It is meant to be mixed with CE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._per_token import target_complement, target_probability
from .registry import LossTerm, Option, register

if TYPE_CHECKING:
    from torch import Tensor


def self_adjusting_dice(ce: Tensor, alpha: float, gamma: float) -> Tensor:
    p_t = target_probability(ce)
    p_tilde = target_complement(ce).pow(alpha) * p_t if alpha else p_t
    return 1 - (2 * p_tilde + gamma) / (p_tilde + 1 + gamma)


SELF_ADJUSTING_DICE = register(
    LossTerm(
        name="sadl",
        kind="token",
        summary="self-adjusting dice 1 - (2p~ + gamma)/(p~ + 1 + gamma), p~ = (1 - p_t)^alpha p_t",
        compute=self_adjusting_dice,
        options={
            "alpha": Option(1.0, "self-adjusting dice alpha", ge=0),
            "gamma": Option(1.0, "self-adjusting dice gamma (smoothing)", ge=0),
        },
        aliases=("self_adjusting_dice",),
        reference="Li et al. 2020, arXiv 1911.02855",
    )
)
