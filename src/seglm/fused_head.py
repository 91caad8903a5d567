"""The fused output layer + loss in training: the causal LM's head computes the objective itself.

``install_fused_head(model, objective)`` puts a :class:`FusedObjectiveHead` in place of the
model's output layer. It holds the same weight (and bias) parameters, so nothing is copied and
tied embeddings stay tied. While the trainer supervises a batch (``head.computing_loss(...)``),
its forward receives the final hidden states and returns the objective's loss through
``fused_objective_loss``: no B x T x V logits, at most a chunk of them. Otherwise it is the
plain linear layer, so generation and evaluation see ordinary logits.

Because the head's weight is used inside the head module's own forward, parameter-gathering
wrappers (FSDP, DeepSpeed ZeRO-3 gather a module's parameters around its forward) and hooks on
the model's outputs (DDP, FSDP) see the usual pattern: the model's forward returns the loss in
place of the logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from seglm.losses import ItemCounts, Objective, ObjectiveOutput
from seglm.losses.fused import fused_objective_loss

# Config attributes of architectures that transform the logits after the output layer (Gemma 2/3
# soft-capping, Cohere's and Granite's scaling): a fused loss from hidden states would skip it.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _causal_lm(model: Any) -> Any:
    """The transformers model that owns the output layer (inside a PEFT wrapper if there is one)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def fused_head_blocker(model: Any) -> str | None:
    """Why the fused head cannot stand in for this model's output layer, or None if it can."""
    owner = _causal_lm(model)
    get_head = getattr(owner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return f"{type(owner).__name__} has no output layer (get_output_embeddings() is None)"
    if type(head) is not nn.Linear and not isinstance(head, FusedObjectiveHead):
        return (
            f"the output layer is a {type(head).__name__}, not a plain torch.nn.Linear "
            "(an adapter on the head, e.g. LoRA with lm_head in target_modules?)"
        )
    config = getattr(owner, "config", None)
    for name in LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value is not None and value != 1:
            return f"the model transforms its logits after the output layer ({name}={value})"
    return None


class FusedObjectiveHead(nn.Module):
    """An ``nn.Linear`` output layer that returns the objective's loss while supervising."""

    def __init__(
        self, head: nn.Linear, objective: Objective, chunk_size: int | None = None
    ) -> None:
        super().__init__()
        self.in_features = head.in_features
        self.out_features = head.out_features
        self.weight = head.weight
        self.register_parameter("bias", head.bias)
        self.objective = objective
        self.chunk_size = chunk_size
        self._batch: tuple[Tensor, Tensor | None, Any] | None = None
        self._output: ObjectiveOutput | None = None

    @contextmanager
    def computing_loss(
        self,
        labels: Tensor,
        answer_mask: Tensor | None = None,
        num_items_in_batch: int | float | Tensor | ItemCounts | None = None,
    ) -> Iterator[None]:
        """Within this block the forward returns the loss of this batch instead of logits."""
        self._batch = (labels, answer_mask, num_items_in_batch)
        try:
            yield
        finally:
            self._batch = None

    def forward(self, hidden: Tensor) -> Tensor:
        if self._batch is None:
            return F.linear(hidden, self.weight, self.bias)
        labels, answer_mask, num_items = self._batch
        if tuple(hidden.shape[:2]) != tuple(labels.shape):
            raise ValueError(
                f"the fused head got hidden states {tuple(hidden.shape)} for labels "
                f"{tuple(labels.shape)}: the model must keep every position (no logits_to_keep)"
            )
        self._output = fused_objective_loss(
            self.objective,
            hidden,
            self.weight,
            labels,
            answer_mask,
            num_items,
            self.bias,
            self.chunk_size,
        )
        return self._output.loss

    def take_output(self) -> ObjectiveOutput:
        """The loss and components of the last supervised forward (once)."""
        if self._output is None:
            raise RuntimeError(
                "the fused head computed no loss: call the model inside computing_loss(...)"
            )
        output, self._output = self._output, None
        return output

    def as_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the same parameters (no copy)."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        linear.weight = self.weight
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, chunk_size={self.chunk_size}"
        )


def install_fused_head(
    model: Any, objective: Objective, chunk_size: int | None = None
) -> FusedObjectiveHead:
    """Replace the model's output layer by a fused head; raise ValueError naming why not."""
    if reason := fused_head_blocker(model):
        raise ValueError(f"the fused loss cannot be used: {reason}")
    owner = _causal_lm(model)
    head = owner.get_output_embeddings()
    if isinstance(head, FusedObjectiveHead):
        head.objective, head.chunk_size = objective, chunk_size
        return head
    fused = FusedObjectiveHead(head, objective, chunk_size)
    owner.set_output_embeddings(fused)
    return fused


def remove_fused_head(model: Any) -> None:
    """Put a plain ``nn.Linear`` (same parameters) back, e.g. before saving the model."""
    owner = _causal_lm(model)
    head = owner.get_output_embeddings()
    if isinstance(head, FusedObjectiveHead):
        owner.set_output_embeddings(head.as_linear())
