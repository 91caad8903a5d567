"""The classes present in each group, laid out for batched set losses.

A set loss (Generalized Dice, Lovász-Softmax) needs, for every class c present in a group's
targets, the probability p_ic at every position i of that group. With a vocabulary of 50k-150k
classes a dense N x V one-hot is out of the question, and so is a Python loop over classes. Each
(group, present class) pair becomes one row of a padded ``[K, T]`` matrix, where T is the size of
the largest group; every per-class reduction or sort is then one batched operation over rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._statistics import row_statistics
from ._tokens import select_valid


@dataclass
class PresentClassLayout:
    tokens: Tensor  # [K, T] token index of the group's t-th position (0 on padding)
    real: Tensor  # [K, T] bool, False on padding past the end of a short group
    foreground: Tensor  # [K, T] bool, the token's target is the pair's class
    pair_class: Tensor  # [K, 1] class of each pair
    pair_group: Tensor  # [K] group of each pair
    pair_count: Tensor  # [K] number of the group's tokens whose target is the pair's class
    group_size: Tensor  # [G] number of tokens in each group
    num_groups: int
    vocab: int


@dataclass
class PresentClassProbs:
    """``probs[k, t]`` = p of pair k's class at its group's t-th token (0 on padding)."""

    layout: PresentClassLayout
    probs: Tensor


def present_class_layout(
    targets: Tensor, group_ids: Tensor, num_groups: int, vocab: int
) -> PresentClassLayout:
    """Pairs (group, present class) and the padded token layout of each group.

    ``targets`` and ``group_ids`` are ``[n]``; ``group_ids`` is non-decreasing (groups are
    contiguous runs of tokens).
    """
    n = targets.shape[0]
    device = targets.device
    group_size = torch.bincount(group_ids, minlength=num_groups)
    group_start = torch.cumsum(group_size, 0) - group_size
    width = int(group_size.max())
    position_in_group = torch.arange(n, device=device) - group_start[group_ids]
    token_at = torch.full((num_groups, width), -1, dtype=torch.long, device=device)
    token_at[group_ids, position_in_group] = torch.arange(n, device=device)

    pair_key, pair_count = torch.unique(group_ids * vocab + targets, return_counts=True)
    pair_group = torch.div(pair_key, vocab, rounding_mode="floor")
    pair_class = (pair_key - pair_group * vocab).unsqueeze(1)
    tokens = token_at[pair_group]
    real = tokens >= 0
    tokens = tokens.clamp_min(0)
    foreground = (targets[tokens] == pair_class) & real
    return PresentClassLayout(
        tokens, real, foreground, pair_class, pair_group, pair_count, group_size, num_groups, vocab
    )


def present_class_probs(
    layout: PresentClassLayout, pair_logits: Tensor, log_normalizer: Tensor
) -> PresentClassProbs:
    """p = exp(logit - logsumexp) for each pair and position; ``log_normalizer`` is per token."""
    probs = torch.exp(pair_logits - log_normalizer[layout.tokens]) * layout.real
    return PresentClassProbs(layout, probs)


def present_class_statistics(
    logits: Tensor, rows: Tensor, targets: Tensor, group_ids: Tensor, num_groups: int
) -> tuple[Tensor, Tensor, PresentClassProbs]:
    """Per-token CE and log-sum-exp, and present-class probabilities, in one pass over
    ``logits[rows]`` (``logits`` is ``[M, V]``, the other arguments ``[n]``)."""
    layout = present_class_layout(targets, group_ids, num_groups, logits.shape[-1])
    ce, log_normalizer, pair_logits = row_statistics(
        logits, rows, targets, rows[layout.tokens], layout.pair_class
    )
    return ce, log_normalizer, present_class_probs(layout, pair_logits, log_normalizer)


def valid_present_class_probs(
    logits: Tensor, targets: Tensor, ignore_index: int, group: str
) -> PresentClassProbs | None:
    """Present-class probabilities of the valid positions, or None when all are ignored."""
    tokens = select_valid(logits, targets, ignore_index, group)
    if tokens.rows.numel() == 0:
        return None
    return present_class_statistics(
        tokens.logits, tokens.rows, tokens.targets, tokens.group_ids, tokens.num_groups
    )[2]
