"""Two CPU processes (torchrun, gloo; the loss from the fused head inside the model's forward)
take the same optimiser step as one process on the same global batch with materialised logits:
exact for token-mean terms, and for set losses with one sequence per group and per micro-batch;
a rank with no answer token does not hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train._helpers import log_events, save_tiny_model
from train.ddp_worker import gradients

WORKER = Path(__file__).parent / "train" / "ddp_worker.py"
TIMEOUT_S = 240  # generous for a busy machine; a hang is what this guards against


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_process_gradients(tmp_path_factory: pytest.TempPathFactory) -> dict:
    output = tmp_path_factory.mktemp("ddp") / "gradients.pt"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free local port
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(output),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(output)


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_token_mean_terms_match_one_process_on_the_same_global_batch(
    two_process_gradients: dict,
) -> None:
    # 2 processes x 1 example x 2 accumulation steps against 1 process x a batch of 4.
    single = gradients("token_mean", batch_size=4, grad_accum=1, fused_loss=False)
    assert any(g.abs().max() > 0 for g in single.values())
    assert_same(two_process_gradients["token_mean"], single)


def test_set_losses_by_sequence_do_not_depend_on_the_split(two_process_gradients: dict) -> None:
    # One sequence per micro-batch on both sides: each micro-batch's set loss is one group.
    single = gradients("set_sequence", batch_size=1, grad_accum=4, fused_loss=False)
    assert_same(two_process_gradients["set_sequence"], single)


def test_a_rank_without_answer_tokens_neither_hangs_nor_changes_the_gradient(
    two_process_gradients: dict,
) -> None:
    # The worker finished (no hang); the empty rank contributed a zero gradient.
    single = gradients("empty_rank", batch_size=2, grad_accum=1, fused_loss=False)
    assert_same(two_process_gradients["empty_rank"], single)


@pytest.mark.slow
def test_torchrun_runs_seglm_train_on_two_processes(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "model")
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "seglm", "train", "--quiet", "--model", str(model), "--task", "arith",
        "--task-options", "train_size=16", "--task-options", "validation_size=4",
        "--max-length", "96", "--max-steps", "3", "--batch-size", "2", "--eval-steps", "2",
        "--logging-steps", "1", "--output-dir", str(run_dir),
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("run folder:") + completed.stderr.count("run folder:") == 1
    report = json.loads((run_dir / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["global_step"] == 3
    # 2 processes x 2 examples a step: 16 examples are 4 steps an epoch.
    assert [e["epoch"] for e in log_events(run_dir) if "loss" in e] == [0.25, 0.5, 0.75]
    assert (run_dir / "adapter_model.safetensors").is_file()


def eval_command(model: Path, out: Path, processes: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc_per_node", str(processes)]
    return [
        *(launcher if processes > 1 else [sys.executable]), "-m", "seglm", "eval", str(model),
        "--task", "arith", "--option", "test_size=7", "--max-new-tokens", "6", "--batch-size",
        "2", "--quiet", "--output-dir", str(out),
    ]  # fmt: skip


def without_timing(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "throughput"}


def test_evaluation_on_two_processes_equals_one_process(tmp_path: Path) -> None:
    # 7 examples over 2 ranks (shares of 4 and 3); rank 0 merges and scores. A share left by an
    # interrupted launch is resumed from, not generated again.
    model = save_tiny_model(tmp_path / "model")
    single, double = tmp_path / "one", tmp_path / "two"
    for out, processes in ((single, 1), (double, 2)):
        completed = subprocess.run(
            eval_command(model, out, processes),
            capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr[-3000:]
    assert (double / "predictions.jsonl").read_text() == (single / "predictions.jsonl").read_text()
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((double / "metrics.json").read_text())
    assert without_timing(two) == without_timing(one) and one["n"] == 7
    assert not list(double.glob("predictions.rank*.jsonl"))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "eval_config.json").write_text((single / "eval_config.json").read_text())
    lines = (single / "predictions.jsonl").read_text().splitlines(keepends=True)
    (resumed / "predictions.rank1.jsonl").write_text("".join(lines[:3]))
    completed = subprocess.run(
        eval_command(model, resumed, 2), capture_output=True, text=True, timeout=TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (resumed / "predictions.jsonl").read_text() == "".join(lines)
    result = json.loads((resumed / "metrics.json").read_text())
    assert without_timing(result) == without_timing(one)
    assert result["throughput"]["examples"] == 4  # the ranks generated only the 4 left
