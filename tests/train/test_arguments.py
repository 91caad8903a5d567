"""seglm.train.arguments: TrainingArguments from the config, and ``trainer_args`` for any other
of its fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from seglm.cli import app
from seglm.config import ConfigError, load_run_config, resolve_config
from seglm.train import check_trainer_args, train, training_arguments

from ._helpers import log_events


def test_trainer_args_reach_the_training_arguments(tiny_config: dict[str, Any]) -> None:
    passed = {
        "dataloader_num_workers": 2,
        "torch_compile": False,
        "lr_scheduler_kwargs": {"min_lr": 1e-3},
        "adam_epsilon": "1e-6",  # how YAML reads 1e-6: text, read as the field's type
    }
    config = resolve_config(overrides={**tiny_config, "trainer_args": passed})
    args = training_arguments(config, has_eval=False, progress=False)
    assert args.dataloader_num_workers == 2 and args.torch_compile is False
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-3}
    assert args.adam_epsilon == 1e-6
    assert args.learning_rate == tiny_config["learning_rate"]  # seglm's own are untouched


@pytest.mark.parametrize(
    ("trainer_args", "message"),
    [
        (
            {"dataloader_num_worker": 2},
            r"trainer_args: 'dataloader_num_worker' is not a field of TrainingArguments "
            r"\(transformers [0-9.]+\); did you mean 'dataloader_num_workers'\?",
        ),
        ({"learning_rate": 0.1}, "trainer_args: seglm sets 'learning_rate' itself"),
        # The other name of a setting that transformers renamed is seglm's too.
        ({"gradient_checkpointing": True}, "seglm sets 'gradient_checkpointing' itself"),
        ({"remove_unused_columns": True}, "seglm sets 'remove_unused_columns' itself"),
        ({"adam_epsilon": "tiny"}, "trainer_args 'adam_epsilon' expects a number, got 'tiny'"),
    ],
)
def test_bad_trainer_args_are_refused_before_anything_loads(
    tiny_config: dict[str, Any], trainer_args: dict[str, Any], message: str
) -> None:
    config = resolve_config(overrides={**tiny_config, "trainer_args": trainer_args})
    with pytest.raises(ConfigError, match=message):
        check_trainer_args(config)
    with pytest.raises(ConfigError, match=message):
        train(config, progress=False)
    assert not Path(tiny_config["output_dir"]).exists()


def test_trainer_args_from_the_command_line_train_and_are_part_of_the_run(
    tiny_config: dict[str, Any],
) -> None:
    # A schedule that needs its own argument: cosine down to min_lr, reached at the last step.
    flags = ["train", "--quiet"]
    for key, value in {**tiny_config, "scheduler": "cosine_with_min_lr", "max_steps": 3}.items():
        if key != "task_options":
            flags += [f"--{key.replace('_', '-')}", str(value)]
    for key, value in tiny_config["task_options"].items():
        flags += ["--task-options", f"{key}={value}"]
    flags += ["--trainer-args", "lr_scheduler_kwargs={min_lr: 0.004}"]
    flags += ["--trainer-args", "dataloader_num_workers=0"]
    result = CliRunner().invoke(app, flags)
    assert result.exit_code == 0, result.output
    run_dir = Path(tiny_config["output_dir"])
    rates = [event["learning_rate"] for event in log_events(run_dir) if "learning_rate" in event]
    # lr(t) = min_lr + (lr - min_lr) (1 + cos(pi t / 3)) / 2 for steps t = 0, 1, 2 (without
    # min_lr, the schedule would go down to 0: 0.01, 0.0075, 0.0025).
    assert rates == pytest.approx([0.01, 0.0085, 0.0055])
    saved = load_run_config(run_dir)
    assert saved.trainer_args == {
        "lr_scheduler_kwargs": {"min_lr": 0.004},
        "dataloader_num_workers": 0,
    }
    # Another value is another run: resuming with it is refused.
    again = CliRunner().invoke(
        app, [*flags[:-2], "--trainer-args", "dataloader_num_workers=1", "--resume"]
    )
    assert again.exit_code == 1 and "trainer_args" in again.output
