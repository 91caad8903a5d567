"""The probability family (Li et al. 2025, arXiv 2510.00526): -p_t^k per token, shifted by 1.

seglm computes 1 - p_t^k, which has the gradient of -p_t^k and is 0 for a perfect prediction.
Its gradient with respect to log p_t is k p_t^k where CE's is 1: tokens the model already finds
likely are pushed hardest, the mirror image of focal loss. k = 1 is "-p"; the paper's strongest
variant is k = 10. The paper finds these beat CE when the model already knows the task ("the
model-strong end") and lose to it when it does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._per_token import target_probability
from .registry import LossTerm, Option, register

if TYPE_CHECKING:
    from torch import Tensor


def probability_power(ce: Tensor, k: float) -> Tensor:
    return 1 - target_probability(ce * k)


PROBABILITY_POWER = register(
    LossTerm(
        name="prob",
        kind="token",
        summary="1 - p_t^k (the gradient of -p^k): more weight on likely tokens; k = 1 is -p",
        compute=probability_power,
        options={"k": Option(1.0, "the power k of p_t (1: -p; the paper's -p^10: 10)", gt=0)},
        aliases=("probability", "neg_prob"),
        reference="Li et al. 2025, arXiv 2510.00526",
    )
)
