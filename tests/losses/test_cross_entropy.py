from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from torch import Tensor

from seglm.losses import CrossEntropyLoss, cross_entropy_loss

from ._helpers import (
    IGNORE,
    PROPERTY,
    loss_inputs,
    random_inputs,
)


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
