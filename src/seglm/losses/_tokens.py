"""Shared plumbing for every loss: shape checks, valid-position selection, group averaging.

Ignored positions are *selected away* before any softmax, never multiplied by a mask, so their
logits (even inf or NaN) cannot reach a value or a gradient (the research code multiplied by a
mask, so ignored positions became class 0 and still counted: docs/method.md, "Known defects").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from seglm.choices import check_choice

from .spec import GROUPS

Group = Literal["batch", "sequence"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types; float64 stays float64 (gradient checks need it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def connected_zero(logits: Tensor) -> Tensor:
    """A finite 0 attached to the graph (an empty sum), so backward gives a zero gradient.

    An empty slice is used rather than ``logits.sum() * 0``, which is NaN when an ignored logit is
    inf or NaN. DDP needs the graph connected even when a micro-batch has nothing to learn from.
    """
    return logits.reshape(-1)[:0].to(compute_dtype(logits.dtype)).sum()


def token_mean(values: Tensor) -> Tensor:
    """Mean over tokens; 0 (still connected to the graph) when there are none."""
    return values.mean() if values.numel() else values.sum()


def check_targets(targets: Tensor, vocab: int, ignore_index: int) -> None:
    # One reduction (one host sync on a GPU) per call; min and max only for the message.
    if targets.numel() and bool(((targets < 0) | (targets >= vocab)).any()):
        raise ValueError(
            f"targets must be in [0, {vocab}) or equal ignore_index={ignore_index}; "
            f"got values in [{int(targets.min())}, {int(targets.max())}]"
        )


def dense_group_ids(group_of_token: Tensor) -> tuple[Tensor, int]:
    """Renumber non-decreasing group labels 0..G-1, so groups without tokens do not count."""
    group_ids = torch.unique_consecutive(group_of_token, return_inverse=True)[1]
    return group_ids, int(group_ids.max()) + 1 if group_ids.numel() else 0


@dataclass
class ValidTokens:
    """The valid positions of a call: row indices into the flattened ``[M, V]`` logits."""

    logits: Tensor  # [M, V] flattened view of the input (no copy)
    rows: Tensor  # [n] rows whose target is not ignored
    targets: Tensor  # [n]
    group_ids: Tensor  # [n] group of each row, non-decreasing
    num_groups: int


def select_valid(logits: Tensor, targets: Tensor, ignore_index: int, group: str) -> ValidTokens:
    """Find the positions of ``[N, V]`` or ``[B, T, V]`` logits whose target is not ignored."""
    check_choice("group", group, GROUPS)
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [N, V] or [B, T, V], got shape {tuple(logits.shape)}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal the logits' leading shape "
            f"{tuple(logits.shape[:-1])}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor, got {logits.dtype}")
    if group == "sequence" and logits.dim() != 3:
        raise ValueError('group="sequence" needs [B, T, V] logits (one group per row)')
    flat_targets = targets.reshape(-1)
    rows = (flat_targets != ignore_index).nonzero().squeeze(1)
    kept_targets = flat_targets.index_select(0, rows)
    check_targets(kept_targets, logits.shape[-1], ignore_index)
    group_ids, num_groups = group_ids_of(rows, targets.shape[-1], group)
    return ValidTokens(
        logits.reshape(-1, logits.shape[-1]), rows, kept_targets, group_ids, num_groups
    )


def group_ids_of(positions: Tensor, seq_len: int, group: str) -> tuple[Tensor, int]:
    """Dense group ids of flat positions ``b * T + t``: one group per sequence, or one for all."""
    sequence = positions // seq_len if group == "sequence" else torch.zeros_like(positions)
    return dense_group_ids(sequence)


def per_group_mean(values: Tensor, group_of_value: Tensor, num_groups: int) -> Tensor:
    """Mean of ``values`` within each group, then mean over groups (each group counts once)."""
    sums = values.new_zeros(num_groups).index_add(0, group_of_value, values)
    counts = torch.bincount(group_of_value, minlength=num_groups).to(values.dtype)
    return (sums / counts).mean()
