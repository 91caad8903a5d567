"""Each registered loss as a function of logits and targets, and as an ``nn.Module``.

``token_loss("focal", logits, targets, gamma=2.0)`` and ``set_loss("lovasz", logits, targets,
group="sequence")`` work for every term in the registry; ``LossModule("eaft", k=20)`` wraps
either. Logits are ``[N, V]`` or ``[B, T, V]`` in any float dtype (computed in float32; float64
stays float64); positions whose target is ``ignore_index`` have no influence at all, whatever
their logits. The named functions and classes below are the same thing under the names seglm
has always exported.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._present import valid_present_class_probs
from ._statistics import row_statistics
from ._tokens import GROUPS, connected_zero, select_valid, token_mean
from .objective import detached_row_statistic, reference_kl
from .registry import LossTerm, get_term
from .spec import option_value


def _options(term: LossTerm, options: dict[str, Any]) -> dict[str, Any]:
    return {**term.defaults(), **{k: option_value(term, k, v) for k, v in options.items()}}


def token_loss(
    name: str,
    logits: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    reference_logits: Tensor | None = None,
    **options: Any,
) -> Tensor:
    """Mean of per-token loss ``name`` over the positions whose target is not ignored
    (``reference_logits``, of the logits' shape, for a term that compares with a reference)."""
    term = get_term(name)
    if term.is_set:
        raise ValueError(f"{term.name} is a set loss: use set_loss")
    settings = _options(term, options)
    tokens = select_valid(logits, targets, ignore_index, "batch")
    ce, log_normalizer, _ = row_statistics(tokens.logits, tokens.rows, tokens.targets)
    extra: dict[str, Tensor] = {}
    if term.row_statistic is not None:
        extra["statistic"] = detached_row_statistic(
            term.row_statistic, settings, tokens.logits, tokens.rows
        )
    if term.uses_reference:
        if reference_logits is None or reference_logits.shape != logits.shape:
            raise ValueError(f"{term.name} needs reference_logits of the logits' shape")
        reference = reference_logits.reshape(tokens.logits.shape)
        extra["kl"] = reference_kl(tokens.logits, tokens.rows, log_normalizer, reference)
    return token_mean(term.compute(ce, **extra, **settings))


def set_loss(
    name: str,
    logits: Tensor,
    targets: Tensor,
    group: str = "batch",
    ignore_index: int = -100,
    **options: Any,
) -> Tensor:
    """Set loss ``name`` over the classes present in each group of valid positions (one group
    per call with ``batch``, one per sequence of ``[B, T, V]`` logits with ``sequence``)."""
    term = get_term(name)
    if not term.is_set:
        raise ValueError(f"{term.name} is a per-token loss: use token_loss")
    settings = _options(term, options)
    present = valid_present_class_probs(logits, targets, ignore_index, group)
    if present is None:
        return connected_zero(logits)
    return term.compute(present, **settings)


class LossModule(nn.Module):
    """Any registered loss as a module: ``LossModule("lovasz", group="sequence")``."""

    def __init__(
        self, name: str, ignore_index: int = -100, group: str | None = None, **options: Any
    ) -> None:
        super().__init__()
        self.term = get_term(name)
        if group is not None and not self.term.is_set:
            raise ValueError(f"{self.term.name} is a per-token loss: it takes no group")
        if group is not None and group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
        self.ignore_index, self.group = ignore_index, group or "batch"
        self.options = _options(self.term, options)

    def forward(
        self, logits: Tensor, targets: Tensor, reference_logits: Tensor | None = None
    ) -> Tensor:
        if self.term.is_set:
            return set_loss(
                self.term.name, logits, targets, self.group, self.ignore_index, **self.options
            )
        return token_loss(
            self.term.name, logits, targets, self.ignore_index, reference_logits, **self.options
        )


# -- the names seglm has always exported --------------------------------------------------------


def cross_entropy_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean token cross-entropy."""
    return token_loss("ce", logits, targets, ignore_index)


def focal_loss(
    logits: Tensor, targets: Tensor, gamma: float = 2.0, ignore_index: int = -100
) -> Tensor:
    """Mean focal loss -(1 - p_t)^gamma log p_t."""
    return token_loss("focal", logits, targets, ignore_index, gamma=gamma)


def self_adjusting_dice_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 1.0,
    gamma: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Mean self-adjusting dice loss."""
    return token_loss("sadl", logits, targets, ignore_index, alpha=alpha, gamma=gamma)


def dft_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean DFT, -stopgrad(p_t) log p_t."""
    return token_loss("dft", logits, targets, ignore_index)


def generalized_dice_loss(
    logits: Tensor,
    targets: Tensor,
    weighting: str = "square",
    absent: str = "present",
    group: str = "batch",
    smooth: float = 1e-5,
    ignore_index: int = -100,
) -> Tensor:
    """Generalized Dice loss over the valid positions, one group per call or per sequence."""
    return set_loss(
        "gdice",
        logits,
        targets,
        group,
        ignore_index,
        weighting=weighting,
        absent=absent,
        smooth=smooth,
    )


def lovasz_softmax_loss(
    logits: Tensor, targets: Tensor, group: str = "batch", ignore_index: int = -100
) -> Tensor:
    """Lovász-Softmax over the classes present in each group's targets."""
    return set_loss("lovasz", logits, targets, group, ignore_index)


class CrossEntropyLoss(LossModule):
    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__("ce", ignore_index)


class FocalLoss(LossModule):
    def __init__(self, gamma: float = 2.0, ignore_index: int = -100) -> None:
        super().__init__("focal", ignore_index, gamma=gamma)


class SelfAdjustingDiceLoss(LossModule):
    def __init__(self, alpha: float = 1.0, gamma: float = 1.0, ignore_index: int = -100) -> None:
        super().__init__("sadl", ignore_index, alpha=alpha, gamma=gamma)


class DFTLoss(LossModule):
    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__("dft", ignore_index)


class GeneralizedDiceLoss(LossModule):
    def __init__(
        self,
        weighting: str = "square",
        absent: str = "present",
        group: str = "batch",
        smooth: float = 1e-5,
        ignore_index: int = -100,
    ) -> None:
        super().__init__(
            "gdice", ignore_index, group, weighting=weighting, absent=absent, smooth=smooth
        )


class LovaszSoftmaxLoss(LossModule):
    def __init__(self, group: str = "batch", ignore_index: int = -100) -> None:
        super().__init__("lovasz", ignore_index, group)
