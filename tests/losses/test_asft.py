"""ASFT: DFT plus alpha KL(reference || model) at each trained token."""

from __future__ import annotations

import pytest
import torch

from seglm.losses import Objective, dft_loss, token_loss

from ._helpers import loss_and_grad, random_inputs


def test_without_the_anchor_it_is_dft() -> None:
    logits, targets = random_inputs(seed=1)
    anchor = torch.randn_like(logits)
    value = token_loss("asft", logits, targets, reference_logits=anchor, alpha=0.0)
    torch.testing.assert_close(value, dft_loss(logits, targets))


def test_the_model_as_its_own_reference_adds_nothing() -> None:
    logits, targets = random_inputs(seed=2)
    value = token_loss("asft", logits, targets, reference_logits=logits.clone(), alpha=0.7)
    torch.testing.assert_close(value, dft_loss(logits, targets))


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_anchor_gradient_is_alpha_times_p_minus_q(alpha: float) -> None:
    """The KL term pulls each trained row's softmax p towards the reference's q: its gradient in
    the logits is alpha (p - q) / n, besides DFT's."""
    logits, targets = random_inputs(seed=3, batch=1, length=3, vocab=5, ignored_share=0.0)
    anchor = torch.randn_like(logits)
    _, grad = loss_and_grad(
        lambda x, y: token_loss("asft", x, y, reference_logits=anchor, alpha=alpha),
        logits,
        targets,
    )
    _, dft_grad = loss_and_grad(dft_loss, logits, targets)
    p, q = torch.softmax(logits, -1), torch.softmax(anchor, -1)
    torch.testing.assert_close(grad - dft_grad, alpha * (p - q) / 3)


def test_needs_the_reference_logits() -> None:
    logits, targets = random_inputs(seed=4)
    with pytest.raises(ValueError, match="reference_logits"):
        token_loss("asft", logits, targets)
    with pytest.raises(ValueError, match="pass reference_logits"):
        Objective("ce=0.5,asft=0.5")(logits, targets)
