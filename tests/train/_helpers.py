"""Helpers for the training tests: a tiny character-level causal LM saved as an ordinary model
folder, one torch thread, and reading a run folder's log."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from seglm.models import char_tokenizer, tiny_llama


def save_tiny_model(folder: Path, seed: int = 0, tied: bool = True) -> Path:
    """Write a random 2-layer Llama and its character tokenizer to ``folder``; ``tied=False``
    gives the output layer its own weight (a copy of the embedding), as Llama-2's has."""
    tokenizer = char_tokenizer()
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, seed=seed)
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models step in milliseconds on one thread; on a busy machine several intra-op
    threads spin against each other and make each step ten times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def log_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
