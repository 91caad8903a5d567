"""Arithmetic shared by the per-token losses, on the tensor of per-token cross-entropies.

Loss files stay free of torch at import (the registry reads them without it), so torch is
imported here inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def target_probability(ce: Tensor) -> Tensor:
    """p_t = exp(-ce)."""
    return (-ce).exp()


def target_complement(ce: Tensor) -> Tensor:
    """1 - p_t from per-token CE, floored at the dtype's smallest normal number so that powers
    below 1 (focal gamma, SADL alpha) keep a finite gradient where p_t rounds to 1."""
    import torch

    return (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)
