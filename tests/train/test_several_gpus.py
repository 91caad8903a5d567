"""Several visible GPUs and no launcher: training refuses instead of falling into
``torch.nn.DataParallel`` (the transformers Trainer's choice when one process sees several)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from seglm.config import ConfigError, resolve_config
from seglm.distributed import unlaunched_gpus_problem
from seglm.train import train


def test_several_gpus_without_a_launcher_are_refused_with_the_recipes() -> None:
    problem = unlaunched_gpus_problem(4, {"PATH": "/usr/bin"})
    assert problem is not None
    assert "4 GPUs are visible" in problem and "DataParallel" in problem
    assert "CUDA_VISIBLE_DEVICES=0 seglm train" in problem
    assert "accelerate launch --config_file configs/accelerate/ddp.yaml -m seglm train" in problem
    assert "torchrun --nproc_per_node 4 -m seglm train" in problem


@pytest.mark.parametrize(
    ("devices", "environ"),
    [
        (0, {}),
        (1, {}),  # one GPU (or CUDA_VISIBLE_DEVICES=0): the Trainer uses it alone
        (8, {"WORLD_SIZE": "8", "RANK": "3", "LOCAL_RANK": "3"}),  # torchrun
        (8, {"LOCAL_RANK": "0"}),  # one process per GPU, as accelerate launch starts them
    ],
)
def test_one_gpu_or_a_launcher_is_allowed(devices: int, environ: dict[str, str]) -> None:
    assert unlaunched_gpus_problem(devices, environ) is None


def test_train_refuses_before_loading_the_model(
    tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="2 GPUs are visible"):
        train(resolve_config(overrides=tiny_config), progress=False)
    assert not (resolve_config(overrides=tiny_config).run_dir / "config.yaml").exists()
