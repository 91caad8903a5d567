"""Probabilities of the classes present in each group, laid out for batched set losses.

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


@dataclass
class PresentClassProbs:
    probs: Tensor  # [K, T] p_{i,c} for pair k = (group, class c) and the group's t-th position
    foreground: Tensor  # [K, T] bool, target at that position is c
    real: Tensor  # [K, T] bool, False on padding past the end of a short group
    pair_group: Tensor  # [K] group index of each pair
    pair_count: Tensor  # [K] number of positions whose target is the pair's class
    group_size: Tensor  # [G] number of positions in each group
    num_groups: int


def present_class_probs(
    logits: Tensor,
    log_normalizer: Tensor,
    targets: Tensor,
    group_ids: Tensor,
    num_groups: int,
    token_rows: Tensor | None = None,
) -> PresentClassProbs:
    """Gather p_ic = exp(logit_ic - logsumexp_i) for the present classes of each group.

    For n tokens: ``targets``, ``group_ids`` (non-decreasing: groups are contiguous) and
    ``log_normalizer`` are ``[n]``; token j's logits are row ``token_rows[j]`` of ``logits``
    (default: row j), so a caller holding a larger matrix need not copy the rows out.
    """
    n = targets.shape[0]
    vocab = logits.shape[-1]
    device = targets.device
    group_size = torch.bincount(group_ids, minlength=num_groups)
    group_start = torch.cumsum(group_size, 0) - group_size
    width = int(group_size.max())
    position_in_group = torch.arange(n, device=device) - group_start[group_ids]
    # token_at[g, t] = the t-th token of group g, or -1 past the group's end.
    token_at = torch.full((num_groups, width), -1, dtype=torch.long, device=device)
    token_at[group_ids, position_in_group] = torch.arange(n, device=device)

    pair_key, pair_count = torch.unique(group_ids * vocab + targets, return_counts=True)
    pair_group = torch.div(pair_key, vocab, rounding_mode="floor")
    pair_class = (pair_key - pair_group * vocab).unsqueeze(1)

    tokens = token_at[pair_group]  # [K, T]
    real = tokens >= 0
    tokens = tokens.clamp_min(0)
    rows = tokens if token_rows is None else token_rows[tokens]
    probs = torch.exp(logits[rows, pair_class] - log_normalizer[tokens]) * real
    foreground = (targets[tokens] == pair_class) & real
    return PresentClassProbs(
        probs, foreground, real, pair_group, pair_count, group_size, num_groups
    )
