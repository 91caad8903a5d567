from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from seglm.losses import FocalLoss, cross_entropy_loss, focal_loss

from ._helpers import (
    BAD_SHAPES,
    POISONS,
    PROPERTY,
    assert_all_ignored_gives_connected_zero,
    assert_gradcheck,
    assert_half_precision_matches_float32,
    assert_ignored_positions_inert,
    assert_matches_reference,
    assert_rejects_bad_input,
    assert_rejects_out_of_range_targets,
    loss_inputs,
    per_token_reference,
    random_inputs,
)

GAMMAS = [0.0, 0.5, 1.0, 2.0, 3.5]


def reference_focal(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    return per_token_reference(logits, targets, lambda p_t, rest: -(rest**gamma) * torch.log(p_t))


@PROPERTY
@given(loss_inputs(), st.sampled_from(GAMMAS))
def test_matches_brute_force(inputs: tuple[Tensor, Tensor], gamma: float) -> None:
    assert_matches_reference(
        partial(focal_loss, gamma=gamma), partial(reference_focal, gamma=gamma), *inputs
    )


@pytest.mark.parametrize("gamma", GAMMAS)
def test_gradcheck(gamma: float) -> None:
    logits, targets = random_inputs(seed=6, batch=2, length=3, vocab=4)
    assert_gradcheck(partial(focal_loss, gamma=gamma), logits, targets)


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


def test_rejects_negative_gamma() -> None:
    logits, targets = random_inputs(seed=8)
    with pytest.raises(ValueError, match="focal gamma must be >= 0"):
        focal_loss(logits, targets, gamma=-1.0)


@PROPERTY
@given(loss_inputs(ignored_shares=(0.3, 0.7)), st.sampled_from(POISONS))
def test_ignored_positions_have_no_influence(inputs: tuple[Tensor, Tensor], poison: float) -> None:
    assert_ignored_positions_inert(focal_loss, *inputs, poison)


@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 5)])
def test_all_ignored_is_connected_zero(shape: tuple[int, ...], any_dtype: torch.dtype) -> None:
    assert_all_ignored_gives_connected_zero(focal_loss, shape, any_dtype)


def test_half_precision_is_computed_in_float32(half_dtype: torch.dtype) -> None:
    assert_half_precision_matches_float32(focal_loss, half_dtype)


@pytest.mark.parametrize(("logits_shape", "targets_shape", "message"), BAD_SHAPES)
def test_rejects_bad_shapes(
    logits_shape: tuple[int, ...], targets_shape: tuple[int, ...], message: str
) -> None:
    assert_rejects_bad_input(focal_loss, logits_shape, targets_shape, message)


def test_rejects_out_of_range_targets() -> None:
    assert_rejects_out_of_range_targets(focal_loss)
