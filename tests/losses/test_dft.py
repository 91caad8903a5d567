"""DFT (Wu et al. 2025): per-token CE weighted by the detached target probability."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from seglm.losses import DFTLoss, dft_loss

from ._helpers import (
    IGNORE,
    per_token_reference,
    random_inputs,
)


def entropy_like(logits: Tensor, targets: Tensor) -> Tensor:
    """The same value without the detach: -p log p, whose gradient DFT does not follow."""
    return per_token_reference(logits, targets, lambda p_t, rest: -p_t * torch.log(p_t))


def reference_dft_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """d/dz of mean_i sg(p_i) * CE_i: p_i * (softmax_i - onehot_i) / n, by hand in float64."""
    flat = logits.reshape(-1, logits.shape[-1])
    grad = torch.zeros_like(flat)
    valid = [(i, y) for i, y in enumerate(targets.reshape(-1).tolist()) if y != IGNORE]
    for i, y in valid:
        probs = torch.softmax(flat[i], dim=0)
        onehot = torch.zeros_like(probs)
        onehot[y] = 1.0
        grad[i] = probs[y] * (probs - onehot) / len(valid)
    return grad.reshape(logits.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_is_the_target_probability_times_the_ce_gradient(seed: int) -> None:
    # Not gradcheck: the weight is detached, so the gradient is not the value's derivative.
    logits, targets = random_inputs(seed=seed, batch=2, length=4, vocab=5)
    logits.requires_grad_()
    dft_loss(logits, targets).backward()
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, reference_dft_gradient(logits.detach(), targets))
    # ... which differs from the derivative of the value -p log p itself.
    value_grad = torch.autograd.grad(entropy_like(logits, targets), logits)[0]
    assert not torch.allclose(logits.grad, value_grad)


def test_bounds_and_perfect_prediction() -> None:
    """-p ln p lies in [0, 1/e], largest at p = 1/e; a certain correct prediction gives ~0."""
    at_max = torch.tensor([[0.0, 1 - math.e + math.log(math.e - 1)]], dtype=torch.float64)
    probs = torch.softmax(at_max, dim=1)
    value = dft_loss(probs.log(), torch.tensor([0]))
    assert value.item() == pytest.approx(-probs[0, 0].item() * math.log(probs[0, 0].item()))
    logits, targets = random_inputs(seed=3, scale=8.0)
    assert 0 <= dft_loss(logits, targets) <= 1 / math.e
    certain = torch.tensor([[50.0, 0.0, 0.0]], dtype=torch.float64)
    assert dft_loss(certain, torch.tensor([0])).item() < 1e-20


def test_module_forwards_its_options() -> None:
    logits, targets = random_inputs(seed=7)
    targets = targets.masked_fill(targets == IGNORE, 3)
    targets[0, 0] = -1
    expected = dft_loss(logits, targets, ignore_index=-1)
    torch.testing.assert_close(DFTLoss(ignore_index=-1)(logits, targets), expected)
