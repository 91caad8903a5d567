"""Inputs, property checks and brute-force building blocks shared by the loss tests.

The brute-force references work on float64 tensors with Python loops over positions and classes,
so they share no code path with ``seglm.losses`` (no valid-position selection, no batched sort).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from torch import Tensor

from seglm.losses import _statistics

IGNORE = -100
LossFn = Callable[[Tensor, Tensor], Tensor]

# Tiny tensors and few examples keep the whole folder well under a minute on two cores; fixed
# seeds keep the suite deterministic for everyone (raise max_examples locally to explore).
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, database=None)
POISONS = (float("inf"), float("-inf"), float("nan"), 1e4)


def random_inputs(
    seed: int,
    batch: int = 2,
    length: int = 5,
    vocab: int = 6,
    *,
    ignored_share: float = 0.3,
    num_classes: int | None = None,
    scale: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """float64 logits ``[B, T, V]`` and targets ``[B, T]``; position (0, 0) is always valid.

    ``num_classes`` < ``vocab`` draws targets from the first classes only, so that the other
    classes are absent from the targets and still carry probability.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64)
    targets = torch.randint(num_classes or vocab, (batch, length), generator=generator)
    ignored = torch.rand(batch, length, generator=generator) < ignored_share
    ignored[0, 0] = False
    return logits, targets.masked_fill(ignored, IGNORE)


@st.composite
def loss_inputs(
    draw: st.DrawFn,
    max_batch: int = 3,
    max_length: int = 6,
    max_vocab: int = 6,
    ignored_shares: tuple[float, ...] = (0.0, 0.3, 0.7),
    min_absent: int = 0,
) -> tuple[Tensor, Tensor]:
    """Random ``[B, T, V]`` float64 logits and targets with ignored positions.

    At least ``min_absent`` classes of the vocabulary never occur in the targets.
    """
    num_classes = draw(st.integers(2, max_vocab))
    return random_inputs(
        draw(st.integers(0, 2**31 - 1)),
        draw(st.integers(1, max_batch)),
        draw(st.integers(1, max_length)),
        num_classes + draw(st.integers(min_absent, min_absent + 2)),
        ignored_share=draw(st.sampled_from(ignored_shares)),
        num_classes=num_classes,
        scale=draw(st.sampled_from([0.3, 3.0, 12.0])),
    )


def loss_and_grad(loss_fn: LossFn, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    leaf = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(leaf, targets)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def assert_matches_reference(
    loss_fn: LossFn, reference: LossFn, logits: Tensor, targets: Tensor
) -> None:
    """Same value and same gradient (float64) as the brute-force reference."""
    loss, grad = loss_and_grad(loss_fn, logits, targets)
    expected_loss, expected_grad = loss_and_grad(reference, logits, targets)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-12)


def assert_gradcheck(loss_fn: LossFn, logits: Tensor, targets: Tensor) -> None:
    leaf = logits.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, targets), (leaf,))


def assert_ignored_positions_inert(
    loss_fn: LossFn, logits: Tensor, targets: Tensor, poison: float
) -> None:
    """Replacing the logits of ignored positions changes neither the value nor any gradient."""
    ignored = targets == IGNORE
    poisoned = logits.clone()
    poisoned[ignored] = poison
    clean_loss, clean_grad = loss_and_grad(loss_fn, logits, targets)
    loss, grad = loss_and_grad(loss_fn, poisoned, targets)
    assert torch.isfinite(loss)
    assert torch.equal(loss, clean_loss)
    assert torch.equal(grad[~ignored], clean_grad[~ignored])
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))


def assert_all_ignored_gives_connected_zero(
    loss_fn: LossFn, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    """All-ignored input: a finite float 0 with a graph, and zero (not NaN) gradients."""
    logits = torch.full(shape, float("nan"), dtype=dtype, requires_grad=True)
    targets = torch.full(shape[:-1], IGNORE)
    loss = loss_fn(logits, targets)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def assert_half_precision_matches_float32(loss_fn: LossFn, dtype: torch.dtype) -> None:
    """bf16/fp16 logits are computed in float32: same value as the float32 call on the same
    (rounded) values, float32 result, gradient in the input dtype."""
    logits, targets = random_inputs(seed=3, batch=2, length=6, vocab=7)
    half = logits.to(dtype)
    loss, grad = loss_and_grad(loss_fn, half, targets)
    float_loss, float_grad = loss_and_grad(loss_fn, half.float(), targets)
    assert loss.dtype == torch.float32
    assert grad.dtype == dtype
    torch.testing.assert_close(loss, float_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, float_grad.to(dtype))
    # And the float32 computation is itself close to float64 on the same values.
    exact_loss, _ = loss_and_grad(loss_fn, half.double(), targets)
    torch.testing.assert_close(loss.double(), exact_loss, rtol=1e-5, atol=1e-6)


def assert_unchanged_in_small_chunks(
    loss_fn: LossFn, logits: Tensor, targets: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logit rows are reduced in chunks of ``CHUNK_ELEMENTS`` values; two rows per chunk must
    give the same value and gradient as one chunk for everything."""
    expected_loss, expected_grad = loss_and_grad(loss_fn, logits, targets)
    monkeypatch.setattr(_statistics, "CHUNK_ELEMENTS", 2 * logits.shape[-1])
    loss, grad = loss_and_grad(loss_fn, logits, targets)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)


BAD_SHAPES = [
    pytest.param((6,), (1,), r"logits must be \[N, V\] or \[B, T, V\]", id="1d-logits"),
    pytest.param((1, 2, 3, 4), (1, 2, 3), r"logits must be \[N, V\]", id="4d-logits"),
    pytest.param((2, 3, 5), (2, 4), r"targets shape \(2, 4\) must equal .*\(2, 3\)", id="targets"),
    pytest.param((4, 5), (4, 1), r"targets shape \(4, 1\) must equal .*\(4,\)", id="2d-targets"),
]


def assert_rejects_bad_input(
    loss_fn: LossFn, logits_shape: tuple[int, ...], targets_shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        loss_fn(torch.zeros(logits_shape), torch.zeros(targets_shape, dtype=torch.long))


def assert_rejects_out_of_range_targets(loss_fn: LossFn) -> None:
    logits = torch.zeros(2, 3, 5)
    for bad in (5, -1):
        targets = torch.tensor([[0, 1, IGNORE], [2, bad, 4]])
        with pytest.raises(ValueError, match=r"targets must be in \[0, 5\) or equal ignore_index"):
            loss_fn(logits, targets)


def valid_groups(targets: Tensor, group: str) -> list[list[int]]:
    """Flat indices of the valid positions of each non-empty group, found by plain loops."""
    rows = [targets.reshape(-1).tolist()] if group == "batch" else targets.tolist()
    width = len(rows[0])
    groups = []
    for row_number, row in enumerate(rows):
        positions = [row_number * width + t for t, y in enumerate(row) if y != IGNORE]
        if positions:
            groups.append(positions)
    return groups


def mean_or_zero(values: list[Tensor], logits: Tensor) -> Tensor:
    return torch.stack(values).mean() if values else logits.sum() * 0


def per_token_reference(
    logits: Tensor, targets: Tensor, loss_of: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Mean over valid positions of ``loss_of(p_t, 1 - p_t)``, p = softmax(logits_i).

    1 - p_t is summed from the other classes' probabilities, not subtracted from 1, so that it
    stays exact (and (1 - p_t)^gamma differentiable) when p_t rounds to 1.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    losses = []
    for i, y in enumerate(targets.reshape(-1).tolist()):
        if y != IGNORE:
            probs = torch.softmax(flat_logits[i], dim=0)
            losses.append(loss_of(probs[y], torch.cat([probs[:y], probs[y + 1 :]]).sum()))
    return mean_or_zero(losses, logits)
