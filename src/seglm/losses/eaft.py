"""Entropy-Adaptive Fine-Tuning (Diao et al. 2026, arXiv 2601.02151): each token's CE times the
detached normalised entropy of the model's top-k distribution at that position,
w = (H_top-k / ln k)^alpha.

Where the model is confident (low entropy) and still wrong, CE's large gradient is what
overwrites its prior ("confident conflicts"); EAFT scales it down. The weight is computed from
the position's whole row of logits (its k largest, renormalised), detached, so the gradient is
w times CE's. LLaMA-Factory (``use_eaft_loss``) divides by 3.0 for k = 20; seglm by ln k
(ln 20 = 2.996), so the two differ by a constant factor 0.9986^alpha.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .registry import LossTerm, Option, register

if TYPE_CHECKING:
    from torch import Tensor


def top_k_entropy_weight(logits: Tensor, k: int, alpha: float) -> Tensor:
    """(H / ln k)^alpha of the softmax over each row's k largest logits ([rows, V] -> [rows])."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).values
    log_probs = top.log_softmax(dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return (entropy / math.log(max(k, 2))).pow(alpha)


def entropy_adaptive(ce: Tensor, statistic: Tensor, k: int, alpha: float) -> Tensor:
    return statistic * ce


ENTROPY_ADAPTIVE = register(
    LossTerm(
        name="eaft",
        kind="token",
        summary="entropy-adaptive fine-tuning: CE times (top-k entropy / ln k)^alpha, detached",
        compute=entropy_adaptive,
        row_statistic=top_k_entropy_weight,
        options={
            "k": Option(20, "how many of the row's largest logits the entropy reads", ge=2),
            "alpha": Option(1.0, "the power of the normalised entropy", ge=0),
        },
        aliases=("entropy_adaptive",),
        reference="Diao et al. 2026, arXiv 2601.02151",
    )
)
