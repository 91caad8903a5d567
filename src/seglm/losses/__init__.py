"""Losses for causal-LM fine-tuning: pure PyTorch, no transformers import.

Each loss is one file declaring its term in the registry (:mod:`seglm.losses.registry`); the
spec grammar (:mod:`seglm.losses.spec`) and the registry need no torch, so this package imports
its torch parts only when one of their names is first used (the config, the grid and the report
read specs without loading torch).

The functions take logits ``[N, V]`` or ``[B, T, V]`` (any float dtype, computed in float32)
and targets of the same leading shape; positions equal to ``ignore_index`` have no influence.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module (under seglm.losses) that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "CrossEntropyLoss",
            "DFTLoss",
            "FocalLoss",
            "GeneralizedDiceLoss",
            "LossModule",
            "LovaszSoftmaxLoss",
            "SelfAdjustingDiceLoss",
            "cross_entropy_loss",
            "dft_loss",
            "focal_loss",
            "generalized_dice_loss",
            "lovasz_softmax_loss",
            "self_adjusting_dice_loss",
            "set_loss",
            "token_loss",
        ),
        "functional",
    ),
    **dict.fromkeys(
        ("ItemCounts", "OBJECTIVE_OPTIONS", "Objective", "ObjectiveOutput"), "objective"
    ),
    **dict.fromkeys(
        (
            "CE_SCOPES",
            "LossSpec",
            "Term",
            "canonical_loss_name",
            "parse_loss_spec",
            "split_term",
        ),
        "spec",
    ),
    **dict.fromkeys(("LossTerm", "Option", "get_term", "register", "terms"), "registry"),
}

__all__ = sorted([*_EXPORTS, "LOSS_NAMES"])


def __getattr__(name: str) -> Any:
    if name == "LOSS_NAMES":  # the registry's short names, CE first
        from .registry import loss_names

        return loss_names()
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
