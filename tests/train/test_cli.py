"""``seglm train``: a YAML file and flags, resume from the run folder, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from seglm.cli import app
from seglm.config import load_run_config, resolve_config, write_config
from seglm.models import resolve_dtype

from ._helpers import log_events


def flags(config: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, dict):
            for item in value.items():
                args += [flag, "=".join(map(str, item))]
        else:
            args += [flag, str(value)]
    return args


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["train", "--quiet", *args])


def test_flags_override_the_file_and_resume_reads_the_saved_config(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    file_values = {"learning_rate": 0.05, "batch_size": 2, "loss": "ce=0.7,sadl=0.3"}
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(file_values))
    options = {**tiny_config, "max_steps": 2, "save_steps": 1}
    del options["learning_rate"], options["batch_size"]
    result = invoke(str(config_file), *flags(options), "--batch-size", "4", "--no-overwrite")
    assert result.exit_code == 0, result.output
    run_dir = Path(tiny_config["output_dir"])
    saved = load_run_config(run_dir)
    assert (saved.learning_rate, saved.batch_size, saved.loss) == (0.05, 4, "ce=0.7,sadl=0.3")
    assert saved.task_options == tiny_config["task_options"]
    text = " ".join(result.output.split())  # rich wraps long paths at the console's width
    assert f"run folder: {run_dir}" in text and "2 steps" in text
    assert {"loss_ce", "loss_sadl"} <= set(log_events(run_dir)[0])

    finished = invoke("--resume", "--output-dir", str(run_dir))
    assert finished.exit_code == 1 and "has finished" in " ".join(finished.output.split())
    # As if the process had been killed after writing checkpoint-1: --resume with only the
    # folder takes the config saved there, so it is the same run.
    shutil.rmtree(run_dir / "checkpoint-2")
    (run_dir / "train_report.json").unlink()
    resumed = invoke("--resume", "--output-dir", str(run_dir))
    assert resumed.exit_code == 0, resumed.output
    assert "2 steps" in resumed.output
    assert [e["step"] for e in log_events(run_dir) if "loss" in e] == [1, 2]


def test_resume_takes_no_trust_from_the_run_folder(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    run_dir = Path(tiny_config["output_dir"])
    run_dir.mkdir()
    write_config(
        resolve_config(overrides={**tiny_config, "trust_remote_code": True}),
        run_dir / "config.yaml",
    )
    result = invoke("--resume", "--output-dir", str(run_dir))
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "sets trust_remote_code: true, and seglm takes no trust from a run folder" in message
    assert "pass --trust-remote-code" in message
    # With the flag it is the user's choice (here: the run has no checkpoint to resume yet).
    trusted = invoke("--resume", "--output-dir", str(run_dir), "--trust-remote-code")
    assert trusted.exit_code == 1  # rich wraps the message at the console's width
    assert "has no complete checkpoint yet" in " ".join(trusted.output.split())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss": "ce=0.6,lovas=0.4"}, "did you mean 'lovasz'"),
        ({"preset": "paper-gsm"}, "unknown preset 'paper-gsm'; did you mean 'paper-gsm8k'"),
        ({"adapter": "ful"}, "did you mean 'full'"),
        ({"model": "smollm2-135m-instuct"}, "did you mean 'smollm2-135m-instruct'"),
    ],
)
def test_bad_values_exit_with_a_message(
    tiny_config: dict[str, Any], overrides: dict[str, str], message: str
) -> None:
    result = invoke(*flags({**tiny_config, **overrides}))
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())


def test_a_mistyped_key_in_the_file_names_the_line(tmp_path: Path) -> None:
    config_file = tmp_path / "train.yaml"
    config_file.write_text("task: arith\nmax_step: 3\n")
    result = invoke(str(config_file))
    assert result.exit_code == 1
    assert "line 2: unknown key 'max_step'; did you mean 'max_steps'?" in " ".join(
        result.output.split()
    )


def test_a_mistyped_flag_suggests_the_right_one() -> None:
    result = invoke("--lerning-rate", "0.1")
    assert result.exit_code == 2
    assert "--learning-rate" in result.output


@pytest.mark.slow
def test_three_lora_steps_of_smollm2_on_arith(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = invoke(
        "--model", "smollm2-135m-instruct",
        "--task", "arith",
        "--task-options", "train_size=12",
        "--eval-split", "none",
        "--max-steps", "3",
        "--batch-size", "2",
        "--dtype", "auto",  # bf16 only where it is fast: minutes a step on an AVX2 CPU
        "--logging-steps", "1",
        "--output-dir", str(run_dir),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "adapter_model.safetensors", "tokenizer.json", "trainer_state.json",
                 "train_report.json", "checkpoint-3"):  # fmt: skip
        assert (run_dir / name).exists(), name
    steps = [e for e in log_events(run_dir) if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all(0 < e["loss_ce"] < 20 and 0 <= e["loss_lovasz"] <= 1 for e in steps)
    report = json.loads((run_dir / "train_report.json").read_text())
    assert report["data"]["train"]["kept"] == 12
    assert report["dtype"] == resolve_dtype("auto")
    assert report["adapter"]["trainable_params"] < report["adapter"]["total_params"] / 50
