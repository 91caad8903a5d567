"""Tests never reach the Hugging Face hub: CI has no network, and a hub retry costs ~50 s."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest
from train._helpers import one_torch_thread, save_tiny_model


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tests that step a tiny model use it: see ``one_torch_thread``."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with a character tokenizer, saved as a model folder; tests that
    change a model folder copy it first."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))
