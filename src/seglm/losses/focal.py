"""Focal loss (Lin et al. 2017) per token: FL = -(1 - p_t)^gamma log p_t.

It scales each token's CE by (1 - p_t)^gamma, moving weight towards tokens the model finds
unlikely; gamma = 0 is CE. A function of the token's CE, so it costs what CE costs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._per_token import target_complement
from .registry import LossTerm, Option, register

if TYPE_CHECKING:
    from torch import Tensor


def focal(ce: Tensor, gamma: float) -> Tensor:
    if gamma == 0:
        return ce
    return target_complement(ce).pow(gamma) * ce


FOCAL = register(
    LossTerm(
        name="focal",
        kind="token",
        summary="focal loss -(1 - p_t)^gamma log p_t: more weight on unlikely tokens",
        compute=focal,
        options={"gamma": Option(2.0, "focal loss gamma (0 is CE)", ge=0)},
        aliases=("focal_loss",),
        reference="Lin et al. 2017, arXiv 1708.02002",
    )
)
