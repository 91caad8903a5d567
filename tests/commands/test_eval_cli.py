"""``seglm eval`` with a tiny random Llama saved with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seglm.cli import app
from seglm.commands.eval import default_output_dir
from seglm.config import EvalConfig, TrainConfig, write_config
from seglm.evaluate import ModelSource
from seglm.models import load_tokenizer, tiny_llama

runner = CliRunner()
ARITH = ["-o", "test_size=4", "-o", "train_size=4", "-o", "validation_size=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def eval_args(tiny_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", str(tiny_dir), "--task", "arith", *ARITH, "--output-dir", str(out),
            "--max-new-tokens", "4", *extra]  # fmt: skip


def test_every_evaluation_setting_is_a_flag() -> None:
    import dataclasses

    result = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for item in dataclasses.fields(EvalConfig):
        flag = item.metadata.get("flags", ("--" + item.name.replace("_", "-"),))[0]
        assert re.search(rf"{flag}\b", result.stdout), flag
    # The settings are checked as EvalConfig checks them, naming the choices.
    bad = runner.invoke(app, ["eval", "m", "--task", "arith", "--scoring", "sample"])
    assert bad.exit_code == 1
    assert "scoring='sample' is not one of 'generate', 'loglik', 'both'" in bad.stderr


def test_eval_writes_predictions_and_prints_metrics(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, eval_args(tiny_dir, out, "--limit", "3", "--json"))
    assert result.exit_code == 0, result.output
    # Progress: one line per batch when stderr is not a terminal.
    assert re.search(r"arith/test: 3/3 \([0-9.]+ ex/s, [0-9]+ tok/s\)", result.stderr)
    summary = json.loads(result.stdout)
    assert summary["n"] == 3 and summary["task"] == "arith" and summary["limit"] == 3
    assert summary["task_options"]["test_size"] == 4
    assert summary["metrics"]["exact_match"] == 0.0  # a random model
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    table = runner.invoke(app, eval_args(tiny_dir, out, "-q"), env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    assert "resumed: 3 predictions were already there" in table.stdout
    assert "arith/test, 4 examples" in table.stdout
    assert f"model: {tiny_dir}" in table.stdout
    assert re.search(r"exact_match[ │]+0\.0000[ │]+4 ", table.stdout)


def test_answer_match_rescores_the_predictions_already_made(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert runner.invoke(app, eval_args(tiny_dir, out, "--limit", "3", "-q")).exit_code == 0
    path = out / "predictions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:  # "$" before the answer: seglm reads it, lm-eval's strict filter not
        record["prediction"] = "#### $" + record["reference"].rsplit("#### ", 1)[1]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    seglm = runner.invoke(app, eval_args(tiny_dir, out, "--limit", "3", "--json"))
    lm_eval = runner.invoke(
        app, eval_args(tiny_dir, out, "--limit", "3", "--json", "--answer-match", "lm-eval")
    )
    assert seglm.exit_code == 0 and lm_eval.exit_code == 0, lm_eval.output
    seglm_summary, lm_eval_summary = json.loads(seglm.stdout), json.loads(lm_eval.stdout)
    assert seglm_summary["answer_match"] == "seglm"
    assert seglm_summary["metrics"]["exact_match"] == 1.0
    assert lm_eval_summary["answer_match"] == "lm-eval"
    assert lm_eval_summary["metrics"]["exact_match"] == 0.0
    assert lm_eval_summary["metrics"]["exact_match_flexible"] == 1.0
    assert "resumed: 3" not in lm_eval.stdout  # nothing generated again: --json output only


def test_broken_predictions_file_names_the_line(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert runner.invoke(app, eval_args(tiny_dir, out, "--limit", "2", "-q")).exit_code == 0
    path = out / "predictions.jsonl"
    first, second = path.read_text().splitlines()
    record = json.loads(second)
    del record["reference"]
    path.write_text(first + "\n" + json.dumps(record) + "\n")
    result = runner.invoke(app, eval_args(tiny_dir, out, "-q"))
    assert result.exit_code == 1
    assert f"error: {path}, line 2: missing field 'reference'" in result.stderr


def test_run_folder_without_weights(tiny_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_config(TrainConfig(model=str(tiny_dir), task="arith"), run / "config.yaml")
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 1
    assert f"error: run folder {run} has no weights at its root" in result.stderr


CUSTOM_CODE = """
import pathlib

pathlib.Path({marker!r}).write_text("the folder's code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "seglm-test-custom"


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
"""


def run_folder_with_custom_code(tiny_dir: Path, run: Path, marker: Path) -> Path:
    """A full fine-tuning run folder whose model maps to a Python file of its own (auto_map)
    and whose config.yaml asks for trust_remote_code, as a hostile folder would."""
    shutil.copytree(tiny_dir, run)
    model_config = json.loads((run / "config.json").read_text())
    model_config["model_type"] = "seglm-test-custom"
    model_config["auto_map"] = {
        "AutoConfig": "custom.CustomConfig",
        "AutoModelForCausalLM": "custom.CustomModel",
    }
    (run / "config.json").write_text(json.dumps(model_config))
    (run / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = TrainConfig(
        model=str(tiny_dir), task="arith", adapter="full", trust_remote_code=True,
        output_dir=str(run),
    )  # fmt: skip
    write_config(config, run / "config.yaml")
    (run / "train_report.json").write_text("{}")
    return run


def test_a_run_folder_cannot_turn_on_its_own_code(
    tiny_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "ran.txt"
    run = run_folder_with_custom_code(tiny_dir, tmp_path / "run", marker)
    args = ["eval", str(run), *ARITH, "--limit", "1", "--max-new-tokens", "2", "-q"]
    refused = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "a")])
    assert refused.exit_code == 1
    assert not marker.exists()
    assert caplog.text.count("config.yaml sets trust_remote_code: true; ignored") == 1
    assert f"error: {run} needs custom code" in refused.stderr
    assert "pass --trust-remote-code" in refused.stderr
    # Only the command's flag runs it (transformers copies the code into its modules cache).
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    trusted = runner.invoke(
        app, [*args, "--output-dir", str(tmp_path / "b"), "--trust-remote-code"]
    )
    assert trusted.exit_code == 0, trusted.output
    assert marker.read_text() == "the folder's code ran"


PAUSED_WORKER = Path(__file__).parent / "paused_eval_worker.py"


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the worker exited with status {process.returncode}")
        assert time.monotonic() < deadline, "the worker never reached its pause"
        time.sleep(0.1)


@pytest.mark.parametrize("first", ["finishes", "is_killed"])
def test_a_second_evaluation_into_the_same_folder_is_refused_while_the_first_holds_it(
    tiny_dir: Path, tmp_path: Path, first: str
) -> None:
    reference = tmp_path / "reference"
    options = ("--limit", "4", "--batch-size", "2", "-q")
    done = runner.invoke(app, eval_args(tiny_dir, reference, *options))
    assert done.exit_code == 0, done.output
    out, ready, go = tmp_path / "eval", tmp_path / "ready", tmp_path / "go"
    worker = [sys.executable, str(PAUSED_WORKER), str(ready), str(go)]
    log = (tmp_path / "holder.log").open("w")
    holder = subprocess.Popen([*worker, *eval_args(tiny_dir, out, *options)], stderr=log)
    try:
        wait_for(ready, holder)  # one batch of two written, the folder held
        second = subprocess.run(
            [sys.executable, "-m", "seglm", *eval_args(tiny_dir, out, *options)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"error: {out} is in use by another evaluation (pid {holder.pid} on " in (
            second.stderr
        )
        assert "wait for it to finish" in second.stderr
        assert len((out / "predictions.jsonl").read_text().splitlines()) == 2  # untouched
        if first == "is_killed":
            holder.send_signal(signal.SIGKILL)
            assert holder.wait(timeout=60) == -signal.SIGKILL
            # The kernel dropped its lock: a rerun resumes from the 2 predictions written.
            rerun = runner.invoke(app, eval_args(tiny_dir, out, *options))
            assert rerun.exit_code == 0, rerun.output
            assert "resumed: 2 predictions were already there" in rerun.stdout
        else:
            go.write_text("")
            assert holder.wait(timeout=300) == 0, (tmp_path / "holder.log").read_text()
    finally:
        holder.kill()
        holder.wait()
        log.close()
    expected = (reference / "predictions.jsonl").read_text()
    assert (out / "predictions.jsonl").read_text() == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "gsm9k"], "unknown task 'gsm9k' (did you mean 'gsm8k'?)"),
        (["--task", "arith", "-o", "test_sise=4"], "task 'arith' has no option 'test_sise'"),
        ([], "give --task (MODEL is not a seglm run folder that names one)"),
        (["--task", "arith", "--scoring", "loglik"], "scoring 'loglik' needs a multiple-choice"),
    ],
)
def test_bad_input_is_one_line_and_status_1(
    tiny_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["eval", str(tiny_dir), *args, "--output-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.stderr


def test_default_output_dir() -> None:
    run = ModelSource("runs/r1", "m", "runs/r1", "m", TrainConfig(task="gsm8k"))
    run_dir = default_output_dir(run, EvalConfig(task="gsm8k"))
    assert run_dir == Path("runs/r1/eval-gsm8k-test")
    model = ModelSource("SmolLM2", "SmolLM2", None, "SmolLM2")
    model_dir = default_output_dir(
        model, EvalConfig(task="openbookqa", scoring="both", num_fewshot=5)
    )
    assert model_dir == Path("evals/smollm2-openbookqa-test-both-5shot")
