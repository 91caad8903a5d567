"""Self-Adjusting Dice: its bounds and its published shape (not minimised at p_t = 1); the
invariances every loss keeps are in test_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from seglm.losses import (
    SelfAdjustingDiceLoss,
    self_adjusting_dice_loss,
)

from ._helpers import (
    PROPERTY,
    loss_inputs,
    random_inputs,
)


@PROPERTY
@given(loss_inputs(), st.floats(0.0, 3.0), st.floats(0.0, 3.0))
def test_sadl_is_between_zero_and_one(
    inputs: tuple[Tensor, Tensor], alpha: float, gamma: float
) -> None:
    loss = self_adjusting_dice_loss(*inputs, alpha=alpha, gamma=gamma)
    assert -1e-12 <= loss.item() <= 1.0 + 1e-12  # up to float64 rounding


@pytest.mark.parametrize(
    "alpha",
    [
        0.5,
        1.0,
        2.0,
    ],
)
def test_sadl_gradient_is_finite_for_a_certain_prediction(alpha: float) -> None:
    """p_t rounds to 1 in float32 for any confident token: common when fine-tuning an LM."""
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    self_adjusting_dice_loss(logits, torch.tensor([0, 1]), alpha=alpha).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[0].abs().max() < 1e-6


def sadl_at(p_t: float) -> float:
    logits = torch.tensor([[math.log(p_t), math.log1p(-p_t)]], dtype=torch.float64)
    return self_adjusting_dice_loss(logits, torch.tensor([0])).item()


def test_sadl_with_alpha_one_is_smallest_at_half_not_at_certainty() -> None:
    """Published form, alpha = gamma = 1: p~ = (1 - p) p; 1/3 at p = 1/2 and 1/2 at both ends."""
    assert sadl_at(0.5) == pytest.approx(1 / 3)
    assert sadl_at(1 - 1e-9) == pytest.approx(0.5, abs=1e-8)
    assert sadl_at(1e-9) == pytest.approx(0.5, abs=1e-8)
    assert sadl_at(0.3) > sadl_at(0.5) < sadl_at(0.7)


def test_sadl_module_forwards_its_options() -> None:
    logits, targets = random_inputs(seed=13, ignored_share=0.0)
    targets[0, 0] = -1
    expected = self_adjusting_dice_loss(logits, targets, alpha=2.0, gamma=0.5, ignore_index=-1)
    module = SelfAdjustingDiceLoss(alpha=2.0, gamma=0.5, ignore_index=-1)
    torch.testing.assert_close(module(logits, targets), expected)
