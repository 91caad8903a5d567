from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from seglm.losses import FocalLoss, cross_entropy_loss, focal_loss

from ._helpers import (
    PROPERTY,
    loss_inputs,
    random_inputs,
)

GAMMAS = [0.0, 0.5, 1.0, 2.0, 3.5]


@PROPERTY
@given(loss_inputs())
def test_gamma_zero_is_cross_entropy(inputs: tuple[Tensor, Tensor]) -> None:
    logits, targets = inputs
    focal = focal_loss(logits, targets, gamma=0.0)
    torch.testing.assert_close(focal, cross_entropy_loss(logits, targets), rtol=1e-12, atol=0)
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    torch.testing.assert_close(focal, expected)


@PROPERTY
@given(loss_inputs(), st.floats(0.05, 5.0))
def test_focal_is_at_most_cross_entropy(inputs: tuple[Tensor, Tensor], gamma: float) -> None:
    logits, targets = inputs
    assert focal_loss(logits, targets, gamma=gamma) <= cross_entropy_loss(logits, targets)


def test_down_weights_easy_tokens() -> None:
    """(1 - p_t)^gamma: an easy token (p_t = 0.9) is scaled by 0.01, a hard one (0.1) by 0.81."""
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9]], dtype=torch.float64)
    targets = torch.tensor([0, 0])
    per_token = [focal_loss(probs.log()[i : i + 1], targets[i : i + 1]).item() for i in (0, 1)]
    assert per_token == pytest.approx([0.01 * -math.log(0.9), 0.81 * -math.log(0.1)])


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradient_is_finite_for_a_certain_prediction(gamma: float) -> None:
    """p_t rounds to 1 in float32; (1 - p_t)^gamma with gamma < 1 must not give an inf gradient."""
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 1]), gamma=gamma)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[0].abs().max() < 1e-12


def test_module_forwards_its_options() -> None:
    logits, targets = random_inputs(seed=7)
    targets = targets.masked_fill(targets == -100, 3)
    targets[0, 0] = -1
    expected = focal_loss(logits, targets, gamma=0.7, ignore_index=-1)
    torch.testing.assert_close(FocalLoss(gamma=0.7, ignore_index=-1)(logits, targets), expected)
