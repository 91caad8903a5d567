"""Fixtures shared by the loss tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(params=[torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def half_dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture(params=[torch.float64, torch.float32, torch.bfloat16], ids=str)
def any_dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture(params=["batch", "sequence"])
def group(request: pytest.FixtureRequest) -> str:
    return request.param
