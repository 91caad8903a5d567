"""The fused output layer + loss in training: the causal LM's head computes the objective itself.

``install_fused_head(model, objective)`` puts a :class:`FusedObjectiveHead` in place of the
model's output layer. It holds the same weight (and bias) parameters, so nothing is copied and
tied embeddings stay tied. While the trainer supervises a batch (``head.computing_loss(...)``),
its forward receives the final hidden states and returns the objective's loss through
``fused_objective_loss``: no B x T x V logits, at most a chunk of them. Otherwise it is the
plain linear layer, so generation and evaluation see ordinary logits.

A PEFT LoRA output layer (the paper's Llama / StableLM setting puts LoRA on ``lm_head``) stays
in place and gets a fused forward instead (:class:`FusedLoraHead`). Only the architectures in
``FUSED_HEAD_MODEL_TYPES`` are fused: the tests compare each with its own materialised logits.

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

# What an output layer multiplies, in column blocks: hidden states [B, T, H_i], weights
# [V, H_i] (logits = sum_i hidden_i @ weight_i^T + bias) and the bias [V] or None.
HeadInput = tuple[list[Tensor], list[Tensor], Tensor | None]

# The architectures (``config.model_type``) whose logits are exactly the output layer applied
# to the final hidden states, each checked in the tests against the materialised logits of the
# model's own forward (tests/train/test_fused_head.py). Elsewhere the logits are materialised:
# an architecture may transform them after the head (Gemma 2/3 soft-capping, Cohere's and
# Granite's scaling), and a fused loss from hidden states would silently skip that.
FUSED_HEAD_MODEL_TYPES = frozenset(
    {
        "falcon",
        "gemma",
        "gpt_neox",
        "llama",
        "mistral",
        "olmo2",
        "phi3",
        "qwen2",
        "qwen3",
        "stablelm",
    }
)


def unwrapped(model: Any) -> Any:
    """The model inside distributed wrappers (DDP's and FSDP's ``module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _causal_lm(model: Any) -> Any:
    """The transformers model that owns the output layer (inside a PEFT wrapper if there is one)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def fused_head_blocker(model: Any) -> str | None:
    """Why the fused head cannot stand in for this model's output layer, or None if it can."""
    owner = _causal_lm(model)
    model_type = getattr(getattr(owner, "config", None), "model_type", None)
    if model_type not in FUSED_HEAD_MODEL_TYPES:
        return (
            f"model type {model_type!r} is not one the fused loss is tested on "
            f"({', '.join(sorted(FUSED_HEAD_MODEL_TYPES))}): it could change the logits after "
            "the output layer"
        )
    get_head = getattr(owner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return f"{type(owner).__name__} has no output layer (get_output_embeddings() is None)"
    if type(head) is nn.Linear or isinstance(head, FusedObjectiveHead):
        return None
    if _is_lora_linear(head):
        return _lora_blocker(head)
    return (
        f"the output layer is a {type(head).__name__}, not a plain torch.nn.Linear or a PEFT "
        "LoRA linear layer"
    )


def _is_lora_linear(module: nn.Module) -> bool:
    from peft.tuners.lora import Linear as LoraLinear

    return type(module) is LoraLinear


def _lora_blocker(layer: Any) -> str | None:
    """What the fused LoRA head does not compute: variants (DoRA, ...), LoRA biases,
    Conv1D-style weights, a base layer that is not a plain Linear."""
    if type(layer.base_layer) is not nn.Linear:
        return f"the LoRA output layer wraps a {type(layer.base_layer).__name__}, not a Linear"
    if layer.fan_in_fan_out:
        return "the LoRA output layer has fan_in_fan_out (a Conv1D-style weight)"
    for name in layer.active_adapters:
        if name in layer.lora_variant:
            variant = type(layer.lora_variant[name]).__name__
            return f"LoRA adapter {name!r} on the output layer is a variant ({variant})"
        if name in layer.lora_B and layer.lora_B[name].bias is not None:
            return f"LoRA adapter {name!r} on the output layer has a bias (lora_bias)"
    return None


class FusedHead:
    """The loss side of a fused output layer: while the trainer supervises a batch
    (``computing_loss``), the layer's forward returns the objective's loss of that batch."""

    objective: Objective
    chunk_size: int | None

    def _start(self, objective: Objective, chunk_size: int | None) -> None:
        self.objective = objective
        self.chunk_size = chunk_size
        self._batch: tuple[Tensor, Tensor | None, Any, HeadInput | None] | None = None
        self._output: ObjectiveOutput | None = None
        self._capturing = False
        self._captured: HeadInput | None = None

    @contextmanager
    def computing_loss(
        self,
        labels: Tensor,
        answer_mask: Tensor | None = None,
        num_items_in_batch: int | float | Tensor | ItemCounts | None = None,
        reference: HeadInput | None = None,
    ) -> Iterator[None]:
        """Within this block the forward returns the loss of this batch instead of logits
        (``reference``: a reference model's head input, for terms that compare with one)."""
        self._batch = (labels, answer_mask, num_items_in_batch, reference)
        try:
            yield
        finally:
            self._batch = None

    @contextmanager
    def capturing_input(self) -> Iterator[None]:
        """Within this block the forward keeps its input (hidden states, weight, bias: what the
        head would multiply) instead of computing logits; :meth:`take_input` returns it. A
        reference model's head input, read this way, costs no B x T x V logits."""
        self._capturing, self._captured = True, None
        try:
            yield
        finally:
            self._capturing = False

    def take_input(self) -> HeadInput:
        if self._captured is None:
            raise RuntimeError("the head captured no input: call the model in capturing_input()")
        captured, self._captured = self._captured, None
        return captured

    def _loss(
        self, hidden: Tensor | list[Tensor], weight: Tensor | list[Tensor], bias: Tensor | None
    ) -> Tensor:
        """The objective's loss of the batch; ``hidden`` and ``weight`` may be column blocks."""
        hidden_blocks = [hidden] if isinstance(hidden, Tensor) else hidden
        weight_blocks = [weight] if isinstance(weight, Tensor) else weight
        if self._capturing:
            self._captured = (
                [block.detach() for block in hidden_blocks],
                [block.detach() for block in weight_blocks],
                None if bias is None else bias.detach(),
            )
            return hidden_blocks[0]
        assert self._batch is not None
        labels, answer_mask, num_items, reference = self._batch
        states = hidden_blocks[0]
        if tuple(states.shape[:2]) != tuple(labels.shape):
            raise ValueError(
                f"the fused head got hidden states {tuple(states.shape)} for labels "
                f"{tuple(labels.shape)}: the model must keep every position (no logits_to_keep)"
            )
        self._output = fused_objective_loss(
            self.objective,
            hidden,
            weight,
            labels,
            answer_mask,
            num_items,
            bias,
            self.chunk_size,
            reference=reference,
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


class FusedObjectiveHead(FusedHead, nn.Module):
    """An ``nn.Linear`` output layer that returns the objective's loss while supervising."""

    def __init__(
        self, head: nn.Linear, objective: Objective, chunk_size: int | None = None
    ) -> None:
        nn.Module.__init__(self)
        self.in_features = head.in_features
        self.out_features = head.out_features
        self.weight = head.weight
        self.register_parameter("bias", head.bias)
        self._start(objective, chunk_size)

    def forward(self, hidden: Tensor) -> Tensor:
        if self._batch is None and not self._capturing:
            return F.linear(hidden, self.weight, self.bias)
        return self._loss(hidden, self.weight, self.bias)

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


class FusedLoraHead(FusedHead):
    """A PEFT LoRA output layer that returns the objective's loss while supervising.

    The LoRA logits ``x W^T + b + s * (dropout(x) A^T) B^T`` are the sum of two column blocks,
    ``x`` with the frozen ``W`` and ``s * dropout(x) A^T`` with ``B`` (one block per active
    adapter), which ``fused_objective_loss`` takes without concatenating them: gradients reach
    x, A and B, and none is computed for the frozen W. The layer stays the same PEFT module (its
    parameters, names, saving and loading); only its forward is replaced, while installed.
    """

    def __init__(self, layer: Any, objective: Objective, chunk_size: int | None = None) -> None:
        self.layer = layer
        self._start(objective, chunk_size)
        layer.forward = self.forward

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        layer = self.layer
        if self._batch is None and not self._capturing:
            return type(layer).forward(layer, x, *args, **kwargs)
        base = layer.base_layer
        hidden, weight = [x], [base.weight]
        if not (layer.disable_adapters or layer.merged):
            for name in layer.active_adapters:
                if name not in layer.lora_A:
                    continue
                lora_a = layer.lora_A[name]
                down = lora_a(layer.lora_dropout[name](x.to(lora_a.weight.dtype)))
                hidden.append(down * layer.scaling[name])
                weight.append(layer.lora_B[name].weight)
        return self._loss(hidden, weight, base.bias)

    def remove(self) -> None:
        """Give the layer its own forward back."""
        if self.layer.__dict__.get("forward") == self.forward:
            del self.layer.forward


def install_fused_head(
    model: Any, objective: Objective, chunk_size: int | None = None
) -> FusedHead:
    """Make the model's output layer a fused head; raise ValueError naming why it cannot be."""
    if reason := fused_head_blocker(model):
        raise ValueError(f"the fused loss cannot be used: {reason}")
    owner = _causal_lm(model)
    head = owner.get_output_embeddings()
    installed = _installed_head(head)
    if installed is not None:
        installed.objective, installed.chunk_size = objective, chunk_size
        return installed
    if _is_lora_linear(head):
        return FusedLoraHead(head, objective, chunk_size)
    fused = FusedObjectiveHead(head, objective, chunk_size)
    owner.set_output_embeddings(fused)
    return fused


def _installed_head(head: Any) -> FusedHead | None:
    if isinstance(head, FusedObjectiveHead):
        return head
    forward = getattr(head, "__dict__", {}).get("forward")
    owner = getattr(forward, "__self__", None)
    return owner if isinstance(owner, FusedLoraHead) else None


def remove_fused_head(model: Any) -> None:
    """Put the plain output layer (same parameters) back, e.g. before saving the model."""
    owner = _causal_lm(model)
    head = owner.get_output_embeddings()
    installed = _installed_head(head)
    if isinstance(installed, FusedObjectiveHead):
        owner.set_output_embeddings(installed.as_linear())
    elif isinstance(installed, FusedLoraHead):
        installed.remove()
