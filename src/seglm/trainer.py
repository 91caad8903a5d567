"""A transformers Trainer that optimises a seglm Objective (and the mixin that makes one of any
Trainer subclass, e.g. TRL's SFTTrainer: ``seglm.integrations.SegLMSFTTrainer``).

It computes the objective from the model's logits, the unshifted labels and the batch's
``answer_mask``, counts label *and* answer tokens over each gradient-accumulation window (and
across devices when the Trainer averages tokens across devices) so every token-mean term is exact,
logs each component as the exact mean over the logging interval's windows, and stops on a
non-finite loss naming the step and the component.
With ``fused_loss`` the model's output layer computes the objective from the final hidden
states in chunks (``seglm.fused_head``), so no B x T x V logits exist.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

import torch
from transformers import Trainer

from seglm.fused_head import FusedHead, fused_head_blocker, install_fused_head, unwrapped
from seglm.losses import ItemCounts, Objective
from seglm.losses.fused import fused_path_problem


class NonFiniteLossError(FloatingPointError):
    """Raised before the optimiser step, so the last saved checkpoint stays good."""


def count_items(batches: list[dict[str, Any]], ignore_index: int = -100) -> ItemCounts | None:
    """Shifted label and answer token counts, and the number of examples with an answer token,
    of a list of micro-batches (the GA window)."""
    if not batches or "labels" not in batches[0]:
        return None
    labels = answer = sequences = 0
    for batch in batches:
        supervised = batch["labels"][..., 1:] != ignore_index
        mask = batch.get("answer_mask")
        in_answer = supervised if mask is None else supervised & mask[..., 1:].bool()
        labels = labels + supervised.sum()
        answer = answer + in_answer.sum()
        sequences = sequences + in_answer.any(dim=-1).sum()
    return ItemCounts(labels=labels, answer=answer, sequences=sequences)


class SegLMTrainerMixin:
    """Put before a ``transformers.Trainer`` subclass: ``class T(SegLMTrainerMixin, Trainer)``;
    the trainer then takes ``objective=`` (an Objective or a spec such as "ce=0.6,lovasz=0.4").

    Batches carry ``labels`` (unshifted, -100 where no loss applies) and optionally
    ``answer_mask``; without it the answer is every supervised label.

    ``fused_loss``: True computes the loss inside the model's output layer without
    materialising logits (ValueError if the model does not allow it); None does so when the
    model allows it (``fused_head_reason`` says why not); False always materialises logits.
    """

    # Our loss is normalised by the window's counts: the Trainer must not divide it by the number
    # of accumulation steps. transformers >= 5.19 reads this; older releases (and TRL's base
    # trainer before 5.19) decide from ``model_accepts_loss_kwargs``, set in __init__.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        objective: Objective | str,
        fused_loss: bool | None = None,
        **kwargs: Any,
    ) -> None:
        training_args = kwargs.get("args") or (args[1] if len(args) > 1 else None)
        # Listing answer_mask as a label keeps remove_unused_columns from dropping it.
        if training_args is not None and training_args.label_names is None:
            training_args.label_names = ["labels", "answer_mask"]
        self.objective = Objective.from_spec(objective) if isinstance(objective, str) else objective
        self.fused_head: FusedHead | None = None
        model = kwargs.get("model") or (args[0] if args else None)
        # A model built or wrapped by the trainer itself (TRL: a hub id, a peft_config) gets its
        # fused head afterwards; otherwise before Trainer.__init__, so that wrappers (DDP, FSDP,
        # DeepSpeed) see it.
        built_later = not isinstance(model, torch.nn.Module) or kwargs.get("peft_config")
        if not built_later:
            self._setup_fused_head(model, fused_loss)
        super().__init__(*args, **kwargs)
        if built_later:
            self._setup_fused_head(self.model, fused_loss)
        self.reference_model, self.reference_head = self._setup_reference(self.model)
        # transformers < 5.19 divides the loss by the accumulation steps unless the model
        # "accepts loss kwargs"; our compute_loss passes none to the model, so this only says
        # that the loss is already normalised over the window.
        self.model_accepts_loss_kwargs = True
        # Share-weighted sums stay on the device: no host copy per micro-batch.
        self._component_sums: dict[str, Any] = defaultdict(float)
        self._windows = 0
        self._window: Any = None

    def _setup_fused_head(self, model: Any, fused_loss: bool | None) -> None:
        self.fused_head_reason = None
        if fused_loss is not False:
            self.fused_head_reason = fused_head_blocker(model) or fused_path_problem(self.objective)
        if fused_loss and self.fused_head_reason is not None:
            raise ValueError(f"the fused loss cannot be used: {self.fused_head_reason}")
        if fused_loss or (fused_loss is None and self.fused_head_reason is None):
            self.fused_head = install_fused_head(model, self.objective)

    def _setup_reference(self, model: Any) -> tuple[torch.nn.Module | None, FusedHead | None]:
        """A term that compares with a reference model (ASFT) reads the model before training:
        with adapters (PEFT), the same model with its adapters disabled (no second copy); with
        full fine-tuning, a frozen copy made here (``reference_copy_mib`` says its size)."""
        self.reference_copy_mib: float | None = None
        if not self.objective.uses_reference or hasattr(unwrapped(model), "disable_adapter"):
            return None, None
        copy = deepcopy(unwrapped(model)).eval().requires_grad_(False)
        self.reference_copy_mib = round(
            sum(p.numel() * p.element_size() for p in copy.parameters()) / 2**20, 1
        )
        head = install_fused_head(copy, self.objective) if self.fused_head is not None else None
        return copy, head

    def reference_report(self) -> dict[str, Any]:
        """How the reference model was kept, for the run's report."""
        if self.reference_model is None:
            return {"kind": "the model with its adapters disabled", "extra_memory_mib": 0.0}
        return {"kind": "a frozen copy of the model", "extra_memory_mib": self.reference_copy_mib}

    @contextmanager
    def _reference_forward(self, model: Any) -> Iterator[Any]:
        """The reference model to call: the frozen copy, or this model with its adapters off."""
        if self.reference_model is not None:
            yield self.reference_model
        else:
            with unwrapped(model).disable_adapter():
                yield model

    def reference_outputs(self, model: Any, inputs: dict[str, Any], fused: bool) -> Any:
        """What the reference gives a batch, without gradient: its head's input on the fused
        path (no logits), else its logits."""
        with torch.no_grad(), self._reference_forward(model) as reference:
            if not fused:
                return reference(**inputs).logits
            head = self.reference_head or self.fused_head
            assert head is not None
            with head.capturing_input():
                reference(**inputs)
            return head.take_input()

    def _get_num_items_in_batch(self, batch_samples: list, device: Any) -> ItemCounts | None:
        """The counts every term normalises by: of a training window, or of an evaluation
        batch (the Trainer calls this for both), summed over processes when the Trainer
        averages tokens across devices."""
        counts = count_items(batch_samples, self.objective.ignore_index)
        if counts is None or not (
            self.args.average_tokens_across_devices and self.args.world_size > 1
        ):
            return counts
        stacked = torch.stack(
            [torch.as_tensor(c) for c in (counts.labels, counts.answer, counts.sequences)]
        )
        total = self.accelerator.gather(stacked.to(device).reshape(1, 3)).sum(0)
        return ItemCounts(labels=total[0], answer=total[1], sequences=total[2])

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        answer_mask = inputs.pop("answer_mask", None)
        # Evaluation that wants logits (prediction_loss_only off) gets them materialised.
        fused = self.fused_head is not None and (model.training or self.args.prediction_loss_only)
        reference = (
            self.reference_outputs(model, inputs, fused) if self.objective.uses_reference else None
        )
        if not fused:
            outputs = model(**inputs)
            result = self.objective(
                outputs.logits, labels, answer_mask, num_items_in_batch, reference
            )
            loss = result.loss
        else:
            assert self.fused_head is not None
            with self.fused_head.computing_loss(labels, answer_mask, num_items_in_batch, reference):
                outputs = model(**inputs)
            result = self.fused_head.take_output()
            # The loss as the model returned it (in place of logits), so hooks that wrappers put
            # on the model's outputs run in the backward.
            loss = outputs.logits
        if not torch.isfinite(loss.detach()):
            bad = [name for name, value in result.components.items() if not torch.isfinite(value)]
            raise NonFiniteLossError(
                f"non-finite loss at step {self.state.global_step + 1}: "
                f"component(s) {', '.join(bad) or 'total'} = "
                + ", ".join(f"{k}={float(v)}" for k, v in result.components.items())
                + "; stopping before the optimiser step (the last checkpoint is intact)"
            )
        if model.training:
            self._add_components(result.components, labels, answer_mask, num_items_in_batch)
        if (
            num_items_in_batch is not None
            and self.args.average_tokens_across_devices
            and self.accelerator.num_processes > 1
        ):
            # The Trainer averages gradients over processes; our loss already divides by the
            # global token count, so undo that average.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _add_components(
        self,
        components: dict[str, torch.Tensor],
        labels: torch.Tensor,
        answer_mask: torch.Tensor | None,
        num_items_in_batch: Any,
    ) -> None:
        """Add each component weighted by this micro-batch's share of its window, as the loss
        is: summed over a window's micro-batches, that is the window's exact mean (a token
        mean for CE, focal and SADL, a mean over examples for sequence-grouped set losses)."""
        # The Trainer passes one counts object per accumulation window.
        if num_items_in_batch is None or num_items_in_batch is not self._window:
            self._window = num_items_in_batch
            self._windows += 1
        local = count_items([{"labels": labels, "answer_mask": answer_mask}])
        assert local is not None
        local_counts = {
            "labels": local.labels,
            "answer": local.answer,
            "sequences": local.sequences,
        }
        for name, value in components.items():
            share = self.objective.term_share(name, num_items_in_batch, local_counts)
            self._component_sums[name] = self._component_sums[name] + value.float() * share

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._windows and "loss" in logs:
            names = sorted(self._component_sums)
            means = torch.stack([self._component_sums[n] for n in names]) / self._windows
            # Shares of counts summed over processes add up across them; local shares average.
            summed = self.args.average_tokens_across_devices and self.args.world_size > 1
            means = self.accelerator.reduce(
                means.to(self.args.device), reduction="sum" if summed else "mean"
            )
            logs.update(
                {f"loss_{n}": round(float(v), 6) for n, v in zip(names, means, strict=True)}
            )
            self._component_sums.clear()
            self._windows = 0
            self._window = None
        super().log(logs, *args, **kwargs)


class SegLMTrainer(SegLMTrainerMixin, Trainer):
    """``Trainer(..., objective=Objective.from_spec("ce=0.6,lovasz=0.4"))``; see
    :class:`SegLMTrainerMixin`."""
