"""Losses for causal-LM fine-tuning: pure PyTorch, no transformers import.

Each function takes logits ``[N, V]`` or ``[B, T, V]`` (any float dtype, computed in float32)
and targets of the same leading shape; positions equal to ``ignore_index`` have no influence.
"""

from .cross_entropy import CrossEntropyLoss, cross_entropy_loss
from .dft import DFTLoss, dft_loss
from .dice import (
    GeneralizedDiceLoss,
    SelfAdjustingDiceLoss,
    generalized_dice_loss,
    self_adjusting_dice_loss,
)
from .focal import FocalLoss, focal_loss
from .lovasz import LovaszSoftmaxLoss, lovasz_softmax_loss
from .objective import (
    CE_SCOPES,
    LOSS_NAMES,
    OBJECTIVE_OPTIONS,
    ItemCounts,
    Objective,
    ObjectiveOutput,
    canonical_loss_name,
    parse_loss_spec,
    split_term,
)

__all__ = [
    "CE_SCOPES",
    "LOSS_NAMES",
    "OBJECTIVE_OPTIONS",
    "CrossEntropyLoss",
    "DFTLoss",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "ItemCounts",
    "LovaszSoftmaxLoss",
    "Objective",
    "ObjectiveOutput",
    "SelfAdjustingDiceLoss",
    "canonical_loss_name",
    "cross_entropy_loss",
    "dft_loss",
    "focal_loss",
    "generalized_dice_loss",
    "lovasz_softmax_loss",
    "parse_loss_spec",
    "self_adjusting_dice_loss",
    "split_term",
]
