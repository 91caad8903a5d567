"""The probability family 1 - p_t^k: its gradient weight k p_t^k, and -p's equality with DFT."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from seglm.losses import dft_loss, token_loss

from ._helpers import PROPERTY, loss_and_grad, loss_inputs, random_inputs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minus_p_has_the_gradient_of_dft(seed: int) -> None:
    """d(-p_t)/dz = p_t (softmax - onehot) = DFT's gradient: the two train the same model."""
    logits, targets = random_inputs(seed=seed, batch=2, length=5, vocab=6)
    _, prob_grad = loss_and_grad(lambda x, y: token_loss("prob", x, y), logits, targets)
    _, dft_grad = loss_and_grad(dft_loss, logits, targets)
    torch.testing.assert_close(prob_grad, dft_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [0.5, 1.0, 10.0])
def test_gradient_weight_is_k_p_to_the_k(k: float) -> None:
    """On one token, the gradient in its target logit is -k p^k (1 - p), CE's times k p^k."""
    logits = torch.tensor([[1.2, -0.3, 0.4]], dtype=torch.float64, requires_grad=True)
    token_loss("prob", logits, torch.tensor([0]), k=k).backward()
    p = torch.softmax(logits.detach(), dim=1)[0, 0]
    assert logits.grad is not None
    assert logits.grad[0, 0].item() == pytest.approx(-k * p.item() ** k * (1 - p.item()))


@PROPERTY
@given(loss_inputs(), st.sampled_from([0.5, 1.0, 10.0]))
def test_is_between_zero_and_one(inputs: tuple[Tensor, Tensor], k: float) -> None:
    assert 0.0 <= token_loss("prob", *inputs, k=k).item() <= 1.0
