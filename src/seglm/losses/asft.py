"""Anchored Supervised Fine-Tuning (Zhu et al. 2025, arXiv 2509.23753): DFT plus
alpha * KL(pi_ref || pi_theta) over the whole vocabulary at each trained token.

DFT alone (-stopgrad(p_t) log p_t) can drift; the KL term anchors the model's distribution at
each trained position to a reference model's. The reference is the model before fine-tuning: with
LoRA, the same model with its adapters disabled (one extra forward without gradient, no second
copy); with full fine-tuning, a frozen copy kept by the trainer (its memory is reported). Per
token: -stopgrad(p_t) log p_t + alpha sum_v q_v (log q_v - log p_v), q = pi_ref; the gradient of
the KL term in the logits is alpha (p - q).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dft import dynamic_fine_tuning
from .registry import LossTerm, Option, register

if TYPE_CHECKING:
    from torch import Tensor


def anchored(ce: Tensor, kl: Tensor, alpha: float) -> Tensor:
    return dynamic_fine_tuning(ce) + alpha * kl


ANCHORED = register(
    LossTerm(
        name="asft",
        kind="token",
        summary="anchored SFT: DFT + alpha KL(reference || model) at each token",
        compute=anchored,
        uses_reference=True,
        options={"alpha": Option(0.1, "weight of the KL anchor to the reference model", ge=0)},
        aliases=("anchored",),
        reference="Zhu et al. 2025, arXiv 2509.23753",
    )
)
