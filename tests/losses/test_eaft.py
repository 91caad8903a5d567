"""EAFT: CE times the detached normalised top-k entropy of each position's row."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from seglm.losses import cross_entropy_loss, token_loss
from seglm.losses.eaft import top_k_entropy_weight

from ._helpers import IGNORE, PROPERTY, loss_inputs, random_inputs


@PROPERTY
@given(loss_inputs(), st.sampled_from([2, 3, 20]))
def test_weight_is_between_zero_and_one(inputs: tuple[Tensor, Tensor], k: int) -> None:
    logits, _ = inputs
    weight = top_k_entropy_weight(logits.reshape(-1, logits.shape[-1]), k, 1.0)
    assert bool(((weight >= 0) & (weight <= 1 + 1e-12)).all())


def test_uniform_row_has_weight_one_and_a_certain_row_weight_zero() -> None:
    rows = torch.tensor([[0.0] * 30, [50.0] + [0.0] * 29], dtype=torch.float64)
    weight = top_k_entropy_weight(rows, 20, 1.0)
    assert weight[0].item() == pytest.approx(1.0)
    assert weight[1].item() < 1e-18


def test_only_the_k_largest_logits_count() -> None:
    """Lowering logits outside the top k changes nothing; k above the vocabulary reads it all."""
    row = torch.tensor([[2.0, 1.5, 1.0, -1.0, -2.0]], dtype=torch.float64)
    lowered = row.clone()
    lowered[0, 3:] = -30.0
    torch.testing.assert_close(
        top_k_entropy_weight(row, 3, 1.0), top_k_entropy_weight(lowered, 3, 1.0)
    )
    probs = torch.softmax(row[0], 0)
    entropy = -(probs * probs.log()).sum() / math.log(5)
    assert top_k_entropy_weight(row, 20, 1.0).item() == pytest.approx(entropy.item())


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_gradient_is_the_weight_times_the_ce_gradient(alpha: float) -> None:
    """The weight is detached: each token's gradient is w_i times its CE gradient."""
    logits, targets = random_inputs(seed=5, batch=1, length=4, vocab=6, ignored_share=0.0)
    leaf = logits.clone().requires_grad_()
    token_loss("eaft", leaf, targets, k=4, alpha=alpha).backward()
    weights = top_k_entropy_weight(logits[0], 4, alpha)
    for t in range(4):
        row = logits[:, t : t + 1].clone().requires_grad_()
        cross_entropy_loss(row, targets[:, t : t + 1]).backward()
        assert row.grad is not None and leaf.grad is not None
        torch.testing.assert_close(leaf.grad[0, t], weights[t] * row.grad[0, 0] / 4)


def test_ignored_rows_get_no_weight_computed() -> None:
    """A NaN row that is ignored must not reach the top-k of the rows that count."""
    logits, targets = random_inputs(seed=9, batch=2, length=3, vocab=5)
    targets[1, 2] = IGNORE
    logits[1, 2] = float("nan")
    assert torch.isfinite(token_loss("eaft", logits, targets))
