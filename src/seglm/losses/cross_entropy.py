"""Token cross-entropy, -log p_t: the reference every other loss is measured against."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import LossTerm, register

if TYPE_CHECKING:
    from torch import Tensor


def cross_entropy(ce: Tensor) -> Tensor:
    return ce


CROSS_ENTROPY = register(
    LossTerm(
        name="ce",
        kind="token",
        summary="token cross-entropy -log p_t (the language-modelling loss)",
        compute=cross_entropy,
        aliases=("cross_entropy",),
    )
)
