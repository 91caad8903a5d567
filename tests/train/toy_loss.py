"""A toy loss, declared as a loss file under seglm/losses declares one: this file is all it
takes for seglm train, the objective, the fused path, the config and seglm losses to know it.

Squared CE: scale * ce^2 / 2 per token, whose gradient weights each token by scale * ce.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seglm.losses.registry import LossTerm, Option, register

if TYPE_CHECKING:
    from torch import Tensor


def squared_cross_entropy(ce: Tensor, scale: float) -> Tensor:
    return scale * ce * ce / 2


SQUARED_CROSS_ENTROPY = register(
    LossTerm(
        name="toy",
        kind="token",
        summary="scale * ce^2 / 2: more weight on the tokens the model gets wrong",
        compute=squared_cross_entropy,
        options={"scale": Option(1.0, "the factor in front", gt=0)},
    )
)
