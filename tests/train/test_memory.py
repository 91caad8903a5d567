"""Training lets go of its model: when ``train`` returns, nothing keeps the model alive, so a grid
cell's evaluation does not load a second copy beside it (on a GPU, in the same memory)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from transformers import TrainerCallback

from seglm.config import resolve_config
from seglm.train import train


class KeepsAWeakReference(TrainerCallback):
    def __init__(self) -> None:
        self.model: weakref.ref[Any] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.model = weakref.ref(kwargs["model"])


def test_the_model_is_freed_when_train_returns(tiny_config: dict[str, Any]) -> None:
    probe = KeepsAWeakReference()
    gc.collect()
    gc.disable()  # freed by reference counting alone, not by a later collection of cycles
    try:
        train(resolve_config(overrides={**tiny_config, "max_steps": 2}), callbacks=[probe])
        assert probe.model is not None
        assert probe.model() is None
    finally:
        gc.enable()
