from __future__ import annotations

from functools import partial
from random import Random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from seglm.losses import LovaszSoftmaxLoss, lovasz_softmax_loss

from ._helpers import (
    IGNORE,
    PROPERTY,
    assert_all_ignored_gives_connected_zero,
    loss_inputs,
    mean_or_zero,
    random_inputs,
    valid_groups,
)

GROUPS = ["batch", "sequence"]


def jaccard_loss_of_mistakes(mistakes: set[int], foreground: set[int]) -> float:
    """Berman et al.'s set function: Delta_J(M) = |M| / |foreground U M| = 1 - IoU."""
    return len(mistakes) / len(foreground | mistakes)


def lovasz_extension(errors: list[Tensor], foreground: set[int]) -> Tensor:
    """The Lovász extension of Delta_J at ``errors``, from its definition: visit positions by
    decreasing error, each weighted by how much it raises Delta_J of the positions seen so far."""
    total = torch.zeros((), dtype=errors[0].dtype)
    mistakes: set[int] = set()
    previous = 0.0
    for i in sorted(range(len(errors)), key=lambda k: -errors[k].item()):
        mistakes.add(i)
        current = jaccard_loss_of_mistakes(mistakes, foreground)
        total = total + errors[i] * (current - previous)
        previous = current
    return total


def reference_lovasz(logits: Tensor, targets: Tensor, group: str = "batch") -> Tensor:
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1).tolist()
    losses = []
    for positions in valid_groups(targets, group):
        probs = [torch.softmax(flat_logits[i], dim=0) for i in positions]
        labels = [flat_targets[i] for i in positions]
        per_class = []
        for c in sorted(set(labels)):
            foreground = {k for k, y in enumerate(labels) if y == c}
            errors = [(float(k in foreground) - p[c]).abs() for k, p in enumerate(probs)]
            per_class.append(lovasz_extension(errors, foreground))
        losses.append(torch.stack(per_class).mean())
    return mean_or_zero(losses, logits)


def test_hand_computed_value() -> None:
    """p(class 0) = 0.9, 0.4, 0.3 for targets 0, 0, 1.
    Class 0: errors 0.1, 0.6, 0.3; by decreasing error Delta_J = 1/2, 2/3, 1 -> 23/60.
    Class 1: errors 0.1, 0.6, 0.3; Delta_J = 1/2, 1, 1 -> 27/60. Mean: 5/12."""
    p0 = torch.tensor([0.9, 0.4, 0.3], dtype=torch.float64)
    logits = torch.stack([p0, 1 - p0], dim=1).log()
    loss = lovasz_softmax_loss(logits, torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(5 / 12, rel=1e-12)


@PROPERTY
@given(loss_inputs(), st.sampled_from(GROUPS), st.integers(0, 2**31 - 1))
def test_equals_jaccard_loss_of_hard_predictions(
    inputs: tuple[Tensor, Tensor], group: str, seed: int
) -> None:
    """The extension is tight: at one-hot probabilities it is the mean of 1 - IoU over the classes
    present in each group's targets."""
    _, targets = inputs
    vocab = inputs[0].shape[-1]
    generator = torch.Generator().manual_seed(seed)
    predictions = torch.randint(vocab, targets.shape, generator=generator)
    logits = 50.0 * torch.nn.functional.one_hot(predictions, vocab).double()
    flat_targets, flat_predictions = targets.reshape(-1), predictions.reshape(-1)
    per_group = []
    for positions in valid_groups(targets, group):
        y, pred = flat_targets[positions], flat_predictions[positions]
        ious = [
            int(((y == c) & (pred == c)).sum()) / int(((y == c) | (pred == c)).sum())
            for c in y.unique()
        ]
        per_group.append(1 - sum(ious) / len(ious))
    loss = lovasz_softmax_loss(logits, targets, group=group)
    assert loss.item() == pytest.approx(sum(per_group) / len(per_group), rel=0, abs=1e-12)


def test_flat_layout_is_one_batch_group() -> None:
    logits, targets = random_inputs(seed=32, batch=3, length=4, vocab=5)
    flat = lovasz_softmax_loss(logits.reshape(12, 5), targets.reshape(12))
    torch.testing.assert_close(flat, lovasz_softmax_loss(logits, targets, group="batch"))


@PROPERTY
@given(loss_inputs())
def test_sequence_group_is_mean_of_per_row_calls(inputs: tuple[Tensor, Tensor]) -> None:
    logits, targets = inputs
    per_row = [
        lovasz_softmax_loss(logits[b], targets[b])
        for b in range(targets.shape[0])
        if (targets[b] != IGNORE).any()
    ]
    sequence = lovasz_softmax_loss(logits, targets, group="sequence")
    torch.testing.assert_close(sequence, torch.stack(per_row).mean())


@PROPERTY
@given(loss_inputs(), st.randoms())
def test_batch_group_ignores_position_order(inputs: tuple[Tensor, Tensor], random: Random) -> None:
    logits, targets = inputs
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    order = list(range(flat_targets.shape[0]))
    random.shuffle(order)
    shuffled = lovasz_softmax_loss(flat_logits[order], flat_targets[order])
    torch.testing.assert_close(shuffled, lovasz_softmax_loss(flat_logits, flat_targets))


@PROPERTY
@given(loss_inputs(), st.sampled_from(GROUPS))
def test_is_between_zero_and_one(inputs: tuple[Tensor, Tensor], group: str) -> None:
    loss = lovasz_softmax_loss(*inputs, group=group).item()
    assert -1e-12 <= loss <= 1.0 + 1e-12  # up to float64 rounding


@PROPERTY
@given(loss_inputs(), st.sampled_from(GROUPS))
def test_near_perfect_prediction_is_near_zero(inputs: tuple[Tensor, Tensor], group: str) -> None:
    _, targets = inputs
    logits = 25.0 * torch.nn.functional.one_hot(targets.clamp_min(0), inputs[0].shape[-1])
    assert lovasz_softmax_loss(logits.double(), targets, group=group).item() < 1e-9


def test_all_ignored_sequence_group_is_connected_zero() -> None:
    loss_fn = partial(lovasz_softmax_loss, group="sequence")
    assert_all_ignored_gives_connected_zero(loss_fn, (2, 3, 5), torch.float32)


def test_sequence_group_needs_batched_logits() -> None:
    with pytest.raises(ValueError, match=r'group="sequence" needs \[B, T, V\] logits'):
        lovasz_softmax_loss(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), group="sequence")


def test_rejects_unknown_group() -> None:
    logits, targets = random_inputs(seed=33)
    with pytest.raises(ValueError, match=r"group='flat' is not one of 'batch', 'sequence'"):
        lovasz_softmax_loss(logits, targets, group="flat")


def test_module_forwards_its_options() -> None:
    logits, targets = random_inputs(seed=34, ignored_share=0.0)
    targets[1, 1] = -1
    expected = lovasz_softmax_loss(logits, targets, group="sequence", ignore_index=-1)
    module = LovaszSoftmaxLoss(group="sequence", ignore_index=-1)
    torch.testing.assert_close(module(logits, targets), expected)
