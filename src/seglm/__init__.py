"""seglm: segmentation-style losses for fine-tuning causal language models."""

__version__ = "0.1.0"
