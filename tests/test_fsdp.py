"""FSDP2 through the HF Trainer and configs/accelerate/fsdp.yaml: two CPU processes (gloo), loss
from the fused head, take the same optimiser steps as one process on the same global batch.

``accelerate launch`` reads the repository's FSDP config; tests/train/fsdp_worker.py lets
accelerate turn FSDP on for CPU processes, which accelerate 1.16 does only for GPUs (without it
the config silently trains with DDP on CPU, which seglm refuses: see the last tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from train._helpers import log_events, save_tiny_model

from seglm.adapters import add_adapter
from seglm.config import ConfigError, resolve_config
from seglm.models import tiny_llama
from seglm.train import check_environment, distributed_problem, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
WORKER = Path(__file__).parent / "train" / "fsdp_worker.py"
TIMEOUT_S = 240  # generous for a busy machine; a collective mismatch hangs
# Each run: (model, settings). The global batch is all 4 examples, one step an epoch, so the
# order in which the sampler hands them out does not matter. SGD without clipping: the update
# is the gradient (Adam would hide a wrongly scaled one).
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    # Full fine-tuning of a model whose output layer is tied to the embedding: the fused head
    # holds the shared weight, in the root FSDP unit; a set loss grouped by sequence.
    "full": ("tied", {"adapter": "full", "loss": "ce=0.6,lovasz=0.4"}),
    # LoRA on the attention and on lm_head (the paper's Llama-2 and StableLM setting; their
    # output layers are not tied): the fused LoRA head.
    # Accumulation (1 example x 2 micro-batches a process) and clipping that bites (the
    # gradient norm is about 0.62): the norm is taken over every process's shards.
    "accumulate-clip": (
        "tied",
        {"adapter": "full", "loss": "ce=0.6,lovasz=0.4", "grad_accum": 2, "max_grad_norm": 0.3},
    ),
    "lora": (
        "untied",
        {
            "adapter": "lora",
            "target_modules": ["q_proj", "v_proj", "lm_head"],
            "lora_dropout": 0.0,  # each process draws its own dropout masks
            "loss": "ce=0.5,focal=0.3,gdice=0.2",
        },
    ),
}
WEIGHTS = {
    "full": "model.safetensors",
    "accumulate-clip": "model.safetensors",
    "lora": "adapter_model.safetensors",
}
RTOL, ATOL = 1e-5, 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each run trained with FSDP2 on 2 processes x 2 examples (1 x 2 micro-batches with
    accumulation) (fsdp/NAME) and on 1 process x 4
    examples (single/NAME); the models in tied/ and untied/."""
    root = tmp_path_factory.mktemp("fsdp")
    save_tiny_model(root / "tied")
    save_tiny_model(root / "untied", tied=False)

    def config(name: str, where: str) -> dict[str, Any]:
        model, settings = RUNS[name]
        values = {
            "model": str(root / model),
            "task": "arith",
            "task_options": {"train_size": 4},
            "eval_split": "none",
            "max_length": 96,
            "max_steps": 2,
            "optim": "sgd",
            "learning_rate": 0.5,
            "max_grad_norm": 0.0,
            "scheduler": "constant",
            "logging_steps": 1,
            "output_dir": str(root / where / name),
            **settings,
        }
        if where == "single":  # the global batch in one micro-batch
            return {**values, "batch_size": 4, "grad_accum": 1}
        return {**values, "batch_size": 2 // values.get("grad_accum", 1)}

    runs_file = root / "runs.json"
    runs_file.write_text(json.dumps([config(name, "fsdp") for name in RUNS]))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
        "--num_processes", "2", str(WORKER), str(runs_file),
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for name in RUNS:
        train(config(name, "single"), progress=False)
    return {"fsdp": root / "fsdp", "single": root / "single", "tied": root / "tied"}


@pytest.mark.parametrize("name", list(RUNS))
def test_fsdp2_takes_the_steps_of_one_process(runs: dict[str, Path], name: str) -> None:
    sharded, single = runs["fsdp"] / name, runs["single"] / name
    report = json.loads((sharded / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["global_step"] == 2
    assert (report["distributed_type"], report["fsdp_version"]) == ("FSDP", 2)  # not DDP
    assert report["fused_loss"]
    assert json.loads((single / "train_report.json").read_text())["fused_loss"]
    # The same loss, loss terms and gradient norm at each step ...
    for got, expected in zip(log_events(sharded), log_events(single), strict=True):
        for key in (k for k in expected if k == "grad_norm" or k.startswith("loss")):
            assert got[key] == pytest.approx(expected[key], rel=RTOL), (got["step"], key)
    # ... and the same weights at the end, gathered into an ordinary file.
    got, expected = (load_file(folder / WEIGHTS[name]) for folder in (sharded, single))
    if "lm_head.weight" in got and "lm_head.weight" not in expected:
        # FSDP's full state dict holds the tied output layer as a copy of the embedding.
        assert torch.equal(got.pop("lm_head.weight"), got["model.embed_tokens.weight"])
    assert got.keys() == expected.keys()
    if WEIGHTS[name] == "model.safetensors":
        start = load_file(runs["tied"] / "model.safetensors")
        moved = max((value - start[key]).abs().max().item() for key, value in expected.items())
    else:  # LoRA's B matrices start at zero
        moved = max(value.abs().max().item() for key, value in expected.items() if "lora_B" in key)
    assert moved > 1e-2  # the steps moved the weights far beyond the tolerance
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=RTOL, atol=ATOL, msg=key)


def test_fsdp_on_cpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # What `accelerate launch --config_file configs/accelerate/fsdp.yaml` sets; on CPU processes
    # accelerate would train with DDP instead.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    problem = distributed_problem()
    assert problem is not None and "FSDP was requested" in problem and "torchrun" in problem
    with pytest.raises(ConfigError, match="without a GPU"):
        check_environment(resolve_config(overrides={"adapter": "full"}))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert "DeepSpeed was requested" in (distributed_problem() or "")


def test_lora_on_a_tied_output_layer_under_fsdp2_ram_efficient_loading_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = resolve_config(overrides={"target_modules": ["q_proj", "lm_head"]})
    for variable, value in (
        ("ACCELERATE_USE_FSDP", "true"),
        ("FSDP_VERSION", "2"),
        ("FSDP_CPU_RAM_EFFICIENT_LOADING", "true"),
    ):
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match="fsdp_cpu_ram_efficient_loading: false"):
        add_adapter(tiny_llama(vocab_size=48, hidden_size=32), config)
    # Without LoRA on the output layer, or without that loading, it is fine.
    add_adapter(tiny_llama(vocab_size=48, hidden_size=32), resolve_config())
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    add_adapter(tiny_llama(vocab_size=48, hidden_size=32), config)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")))
def test_accelerate_configs_load(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # unknown keys are a ValueError
    assert config.distributed_type.value in ("MULTI_GPU", "FSDP", "DEEPSPEED")
