"""Drop-in use of seglm's objective in an existing transformers or TRL trainer.

    from seglm.integrations import SegLMLoss
    loss = SegLMLoss("ce=0.6,lovasz=0.4")
    Trainer(model, args, train_dataset=ds, compute_loss_func=loss).train()

``SegLMLoss`` follows the ``compute_loss_func(outputs, labels, num_items_in_batch)`` contract:
labels are unshifted and the answer is every non-ignored label (what TRL's completion-only
datasets give). For separate prompt and answer supervision use :class:`SegLMTrainer`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from seglm.losses import Objective
from seglm.trainer import SegLMTrainer

__all__ = ["SegLMLoss", "SegLMTrainer"]


class SegLMLoss:
    """A ``compute_loss_func`` for ``transformers.Trainer`` and ``trl.SFTTrainer``."""

    def __init__(self, objective: Objective | str = "ce=0.6,lovasz=0.4", **objective_kwargs: Any):
        if isinstance(objective, str):
            objective = Objective.from_spec(objective, **objective_kwargs)
        elif objective_kwargs:
            raise TypeError(
                "pass options either in the Objective or as keywords with a spec string"
            )
        self.objective = objective
        self.last_components: dict[str, Tensor] = {}

    def __call__(self, outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        if labels is None:
            raise ValueError(
                "SegLMLoss needs labels: the Trainer passes them when the batch has a 'labels' key"
            )
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        result = self.objective(logits, labels, None, num_items_in_batch)
        self.last_components = result.components
        return result.loss
