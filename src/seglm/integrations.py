"""Use seglm's objective in an existing transformers or TRL training script.

    from seglm.integrations import SegLMSFTTrainer
    trainer = SegLMSFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
                              objective="ce=0.6,lovasz=0.4")
    trainer.train()

- :class:`SegLMTrainer` (a ``transformers.Trainer``) and ``SegLMSFTTrainer`` (a
  ``trl.SFTTrainer``: its data preparation, chat templates, completion-only labels and PEFT) both
  compute the objective themselves (``compute_loss``), count label tokens, answer tokens and
  answered examples over each gradient-accumulation window and across processes, use the fused
  output layer when the model allows it, and log each component. This is how TRL asks for custom
  losses: ``SFTTrainer(compute_loss_func=...)`` is deprecated in TRL 1.x and removed in 2.0.
- :class:`SegLMLoss` follows the ``compute_loss_func(outputs, labels, num_items_in_batch)``
  contract of ``transformers.Trainer``: labels are unshifted and the answer is every non-ignored
  label (what TRL's completion-only data gives). It is only told the window's label count, so it
  refuses a sequence-grouped set loss (GDice, Lovász) over a window bigger than one micro-batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from seglm.losses import ItemCounts, Objective
from seglm.trainer import SegLMTrainer, SegLMTrainerMixin

# SegLMSFTTrainer (module __getattr__) is built on first use: TRL is optional.
__all__ = ["SegLMLoss", "SegLMTrainer", "SegLMTrainerMixin"]


class SegLMLoss:
    """A ``compute_loss_func`` for ``transformers.Trainer`` (and ``trl.SFTTrainer`` in TRL 1.x).

    Exact under gradient accumulation and across processes for CE, focal and self-adjusting dice
    (with labels alone every term averages over the same tokens, which the Trainer counts).
    A ``sequence``-grouped GDice or Lovász term is a mean over the window's examples, which the
    Trainer does not count: over a window of several micro-batches (or processes) it raises
    ValueError instead of training on a micro-batch-dependent weighting. Use ``SegLMTrainer``
    or ``SegLMSFTTrainer`` there.
    """

    def __init__(self, objective: Objective | str = "ce=0.6,lovasz=0.4", **objective_kwargs: Any):
        if isinstance(objective, str):
            objective = Objective.from_spec(objective, **objective_kwargs)
        elif objective_kwargs:
            raise TypeError(
                "pass options either in the Objective or as keywords with a spec string"
            )
        if objective.uses_reference:
            raise ValueError(
                "SegLMLoss: a term that compares with a reference model (asft) needs the "
                "reference's logits, which a compute_loss_func is not given; use "
                "seglm.integrations.SegLMTrainer or SegLMSFTTrainer"
            )
        self.objective = objective
        self.last_components: dict[str, Tensor] = {}
        self._sequence_terms = sorted(objective.set_terms) if objective.group == "sequence" else []

    def __call__(self, outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        if labels is None:
            raise ValueError(
                "SegLMLoss needs labels: the Trainer passes them when the batch has a 'labels' key"
            )
        if self._sequence_terms and not isinstance(num_items_in_batch, ItemCounts):
            self._check_window_is_this_batch(labels, num_items_in_batch)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        result = self.objective(logits, labels, None, num_items_in_batch)
        self.last_components = result.components
        return result.loss

    def _check_window_is_this_batch(self, labels: Tensor, num_items_in_batch: Any) -> None:
        """A label count for more labels than this micro-batch holds means a window of several
        micro-batches or processes, whose number of examples is unknown here."""
        if num_items_in_batch is None:
            return
        window = torch.as_tensor(num_items_in_batch).reshape(-1)[0]
        local = (labels[..., 1:] != self.objective.ignore_index).sum()
        if int(window) == int(local):
            return
        terms = ", ".join(repr(name) for name in self._sequence_terms)
        raise ValueError(
            f"SegLMLoss: {terms} with group='sequence' is a mean over the examples of the whole "
            "gradient-accumulation window (all processes included), but a compute_loss_func is "
            f"only told the window's label count ({int(window)}; this micro-batch has "
            f"{int(local)}), so it cannot weight this micro-batch exactly. Use "
            "seglm.integrations.SegLMTrainer or SegLMSFTTrainer (they count the window's "
            "examples), or one micro-batch per step on one process (gradient_accumulation_steps=1)"
            ", or group='batch'."
        )


def _sft_trainer_class() -> type:
    try:
        from trl import SFTTrainer
    except ImportError:
        raise ImportError(
            "SegLMSFTTrainer needs TRL: pip install 'seglm[trl]' (or pip install trl)"
        ) from None

    class SegLMSFTTrainer(SegLMTrainerMixin, SFTTrainer):  # type: ignore[misc, valid-type]
        """``trl.SFTTrainer`` that optimises a seglm objective:
        ``SegLMSFTTrainer(model=..., args=SFTConfig(...), train_dataset=ds, objective=spec)``.

        The answer is every label TRL keeps: the completion of prompt/completion data (its
        default ``completion_only_loss``), the assistant turns with ``assistant_only_loss``.
        ``fused_loss`` as in :class:`~seglm.trainer.SegLMTrainerMixin`. TRL's own loss,
        ``loss_type`` and token metrics (entropy, token accuracy) are not computed.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            packed = getattr(self.args, "packing", False) or getattr(
                self.args, "padding_free", False
            )
            set_terms = self.objective.set_terms
            if packed and set_terms and self.objective.group == "sequence":
                raise ValueError(
                    f"SegLMSFTTrainer: packing / padding_free put several examples in one row, "
                    f"so group='sequence' cannot tell the examples of {sorted(set_terms)} "
                    "apart; set packing=False and padding_free=False, or group='batch'"
                )

    SegLMSFTTrainer.__module__ = __name__
    SegLMSFTTrainer.__qualname__ = "SegLMSFTTrainer"
    return SegLMSFTTrainer


def __getattr__(name: str) -> Any:
    # TRL is optional: the SFTTrainer subclass is built on first use.
    if name == "SegLMSFTTrainer":
        cls = _sft_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
