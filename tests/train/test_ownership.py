"""A run folder holds the user's files safely: --overwrite and --resume delete only seglm's own
files, a folder seglm did not make is refused, two trainings into one folder are one too many,
and a damaged checkpoint is never resumed from."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from seglm.config import ConfigError, load_run_config, resolve_config
from seglm.train import train

from ._helpers import log_events

RACE_WORKER = Path(__file__).parent / "race_worker.py"
USER_FILES = {
    "notes.txt": b"my notes\n",
    "results.csv": b"step,loss\n1,2.5\n",
    "mine/plot.png": b"\x89PNG",
    "eval-mine/metrics.json": b'{"mine": true}',
}


def run(config: dict[str, Any], **overrides: Any) -> Any:
    return train(resolve_config(overrides={**config, **overrides}), progress=False)


def plant(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def assert_intact(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name


def test_overwrite_replaces_seglms_files_and_keeps_the_users(
    tiny_config: dict[str, Any],
) -> None:
    first = run(tiny_config, max_steps=2)
    plant(first.run_dir, USER_FILES)
    again = run(tiny_config, max_steps=3, save_steps=3, overwrite=True)
    assert_intact(again.run_dir, USER_FILES)
    assert load_run_config(again.run_dir).max_steps == 3
    assert [e["step"] for e in log_events(again.run_dir) if "loss" in e] == [1, 2, 3]
    assert sorted(p.name for p in again.run_dir.glob("checkpoint-*")) == ["checkpoint-3"]


def test_a_folder_seglm_did_not_make_is_refused_overwrite_or_not(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "mine"
    files = {
        "config.yaml": b"task: arith\nlearning_rate: 0.1\n",  # the user's own config, in place
        "notes.txt": b"notes",
        "checkpoint-3/model.safetensors": b"my weights",
    }
    plant(folder, files)
    for overwrite in (False, True):
        with pytest.raises(ConfigError) as error:
            run(tiny_config, output_dir=str(folder), overwrite=overwrite)
        assert "is not empty and holds no seglm run (checkpoint-3/model.safetensors is not" in str(
            error.value
        )
    assert_intact(folder, files)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-3", "config.yaml", "notes.txt"]


def test_resume_refuses_a_checkpoint_folder_of_the_users(tiny_config: dict[str, Any]) -> None:
    result = run(tiny_config)  # 4 steps, checkpoints 2 and 4
    (result.run_dir / "train_report.json").unlink()  # as if stopped before its end
    plant(result.run_dir, {"checkpoint-9/notes.txt": b"mine", **USER_FILES})
    with pytest.raises(ConfigError, match=r"checkpoint-9 is not seglm's, and training would"):
        run(tiny_config, resume=True)
    assert_intact(result.run_dir, {"checkpoint-9/notes.txt": b"mine", **USER_FILES})


DAMAGE = {
    "adapter_model.safetensors": (lambda data: data[: len(data) // 2], "is cut short"),
    "optimizer.pt": (lambda data: b"", "is empty"),
    "scheduler.pt": (lambda data: data[:-100], "does not load as tensors with weights_only"),
    "rng_state.pth": (lambda data: data[: len(data) // 2], "does not load as tensors"),
    "trainer_state.json": (lambda data: data[: len(data) // 2], "is not readable JSON"),
}


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """8 steps with checkpoints at 2, 4, 6 and 8, gradient accumulation and LoRA dropout."""
    folder = tmp_path_factory.mktemp("whole") / "run"
    config = {
        "model": str(tiny_model),
        "task": "arith",
        "task_options": {"train_size": 24, "validation_size": 8, "test_size": 4},
        "max_length": 96,
        "max_steps": 8,
        "batch_size": 2,
        "grad_accum": 2,
        "learning_rate": 1e-2,
        "eval_split": "none",
        "save_steps": 2,
        "save_total_limit": 4,
        "logging_steps": 1,
        "output_dir": str(folder),
    }
    torch.set_num_threads(1)
    train(resolve_config(overrides=config), progress=False)
    return folder


@pytest.mark.parametrize("name", list(DAMAGE))
def test_resume_falls_back_from_a_damaged_checkpoint_to_the_previous_whole_one(
    whole_run: Path, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(whole_run, folder)
    (folder / "train_report.json").unlink()  # stopped at step 8, before the end was saved
    shutil.rmtree(folder / "checkpoint-8")
    damage, problem = DAMAGE[name]
    damaged = folder / "checkpoint-6" / name
    damaged.write_bytes(damage(damaged.read_bytes()))
    config = load_run_config(whole_run).to_dict() | {"output_dir": str(folder), "resume": True}
    with caplog.at_level(logging.WARNING, logger="seglm.train"):
        resumed = train(resolve_config(overrides=config), progress=False)
    assert f"resume: skipped checkpoint-6 ({name} {problem}" in caplog.text
    assert resumed.report["resumed_from"].endswith("checkpoint-4")
    expected = load_file(whole_run / "adapter_model.safetensors")
    got = load_file(folder / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[key], value) for key, value in expected.items())
    assert [e["step"] for e in log_events(folder) if "loss" in e] == list(range(1, 9))


def test_two_trainings_started_together_into_one_folder(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    out, go = tmp_path / "run", tmp_path / "go"
    flags = ["--model", tiny_config["model"], "--output-dir", str(out), "--max-steps", "6",
             "--batch-size", "4", "--max-length", "96", "--eval-split", "none", "--save-steps",
             "3", "--logging-steps", "1", "--task-options", "train_size=24", "-q"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(RACE_WORKER), str(go), *flags]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    processes = [subprocess.Popen(command, **pipes) for _ in range(2)]  # type: ignore[call-overload]
    go.write_text("")
    outputs = [process.communicate(timeout=300)[1] for process in processes]
    codes = sorted(process.returncode for process in processes)
    assert codes == [0, 1], outputs
    refused = next(o for o, p in zip(outputs, processes, strict=True) if p.returncode == 1)
    text = " ".join(refused.split())
    assert "is in use by another training run (pid" in text or "already holds this run" in text
    assert "Traceback" not in text
    # The folder is as one training leaves it: each step logged once, one config, whole weights.
    assert [e["step"] for e in log_events(out) if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert load_run_config(out).max_steps == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
