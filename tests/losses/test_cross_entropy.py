from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from seglm.losses import CrossEntropyLoss, cross_entropy_loss

from ._helpers import (
    BAD_SHAPES,
    IGNORE,
    POISONS,
    PROPERTY,
    assert_all_ignored_gives_connected_zero,
    assert_gradcheck,
    assert_half_precision_matches_float32,
    assert_ignored_positions_inert,
    assert_matches_reference,
    assert_rejects_bad_input,
    assert_rejects_out_of_range_targets,
    assert_unchanged_in_small_chunks,
    loss_inputs,
    per_token_reference,
    random_inputs,
)


def reference_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return per_token_reference(logits, targets, lambda p_t, _: -torch.log(p_t))


@PROPERTY
@given(loss_inputs())
def test_matches_brute_force(inputs: tuple[Tensor, Tensor]) -> None:
    assert_matches_reference(cross_entropy_loss, reference_cross_entropy, *inputs)


@PROPERTY
@given(loss_inputs())
def test_matches_torch_cross_entropy(inputs: tuple[Tensor, Tensor]) -> None:
    logits, targets = inputs
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    torch.testing.assert_close(cross_entropy_loss(logits, targets), expected)


def test_flat_and_batched_layouts_agree() -> None:
    logits, targets = random_inputs(seed=1, batch=3, length=4, vocab=5)
    flat = cross_entropy_loss(logits.reshape(12, 5), targets.reshape(12))
    torch.testing.assert_close(flat, cross_entropy_loss(logits, targets))


def test_custom_ignore_index() -> None:
    logits, targets = random_inputs(seed=2, vocab=5)
    targets = targets.masked_fill(targets == IGNORE, -1)
    expected = F.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1), ignore_index=-1)
    torch.testing.assert_close(cross_entropy_loss(logits, targets, ignore_index=-1), expected)


def test_module_forwards_its_ignore_index() -> None:
    logits, targets = random_inputs(seed=4, vocab=5, ignored_share=0.0)
    targets = targets.masked_fill(targets == 0, -1)
    assert (targets == -1).any()
    expected = cross_entropy_loss(logits, targets, ignore_index=-1)
    torch.testing.assert_close(CrossEntropyLoss(ignore_index=-1)(logits, targets), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_small_chunks_change_nothing(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    logits, targets = random_inputs(seed=9, batch=3, length=5, vocab=6)
    assert_unchanged_in_small_chunks(cross_entropy_loss, logits.to(dtype), targets, monkeypatch)


def test_gradcheck() -> None:
    assert_gradcheck(cross_entropy_loss, *random_inputs(seed=5, batch=2, length=3, vocab=4))


@PROPERTY
@given(loss_inputs(ignored_shares=(0.3, 0.7)), st.sampled_from(POISONS))
def test_ignored_positions_have_no_influence(inputs: tuple[Tensor, Tensor], poison: float) -> None:
    assert_ignored_positions_inert(cross_entropy_loss, *inputs, poison)


@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 5)])
def test_all_ignored_is_connected_zero(shape: tuple[int, ...], any_dtype: torch.dtype) -> None:
    assert_all_ignored_gives_connected_zero(cross_entropy_loss, shape, any_dtype)


def test_half_precision_is_computed_in_float32(half_dtype: torch.dtype) -> None:
    assert_half_precision_matches_float32(cross_entropy_loss, half_dtype)


@pytest.mark.parametrize(("logits_shape", "targets_shape", "message"), BAD_SHAPES)
def test_rejects_bad_shapes(
    logits_shape: tuple[int, ...], targets_shape: tuple[int, ...], message: str
) -> None:
    assert_rejects_bad_input(cross_entropy_loss, logits_shape, targets_shape, message)


def test_rejects_out_of_range_targets() -> None:
    assert_rejects_out_of_range_targets(cross_entropy_loss)
