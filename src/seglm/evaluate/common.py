"""What every part of an evaluation shares: defaults, file names, the error type (the settings
are :class:`seglm.config.EvalConfig`)."""

from __future__ import annotations

FEWSHOT_SPLIT = "train"
FEWSHOT_DELIMITER = "\n\n"  # lm-evaluation-harness's fewshot_delimiter
CHOICE_DELIMITER = " "  # lm-evaluation-harness's target_delimiter before each choice
DEFAULT_BATCH_SIZES = {"cpu": 32, "cuda": 64}
FALLBACK_BATCH_SIZE = 16
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
OUT_OF_MEMORY = ("out of memory", "can't allocate memory")


class EvalError(ValueError):
    """Bad input to an evaluation: names the file, field or setting and what was expected."""
