"""Dynamic Fine-Tuning (Wu et al. 2025, arXiv 2508.05629): DFT = -stopgrad(p_t) log p_t.

Each token's cross-entropy is weighted by the model's own probability of the target, detached,
so the gradient is ``p_t * dCE``: tokens the model already finds unlikely are pushed less than
with CE. The value lies in [0, 1/e] per token (the maximum of -p ln p is at p = 1/e).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._per_token import target_probability
from .registry import LossTerm, register

if TYPE_CHECKING:
    from torch import Tensor


def dynamic_fine_tuning(ce: Tensor) -> Tensor:
    return target_probability(ce).detach() * ce


DYNAMIC_FINE_TUNING = register(
    LossTerm(
        name="dft",
        kind="token",
        summary="dynamic fine-tuning -stopgrad(p_t) log p_t: CE's gradient times p_t",
        compute=dynamic_fine_tuning,
        aliases=("dynamic_fine_tuning",),
        reference="Wu et al. 2025, arXiv 2508.05629",
    )
)
