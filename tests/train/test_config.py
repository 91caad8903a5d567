"""TrainConfig: YAML, presets and overrides, with errors that name the field and suggest."""

from __future__ import annotations

from pathlib import Path

import pytest

from seglm.config import (
    ConfigError,
    TrainConfig,
    load_run_config,
    preset_names,
    resolve_config,
    write_config,
)
from seglm.losses import OBJECTIVE_OPTIONS
from seglm.losses.registry import Option, option_fields
from seglm.train import build_objective


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_objective_options_are_config_fields_with_the_registry_defaults() -> None:
    fields = option_fields()
    assert set(OBJECTIVE_OPTIONS) == {"ce_scope", "group", *fields}
    assert {"focal_gamma", "sadl_alpha", "gdice_weighting", "eaft_k", "prob_k"} <= set(fields)
    config = TrainConfig()
    for name, (_, _, option) in fields.items():
        assert getattr(config, name) == option.default, name
    assert (config.ce_scope, config.group) == ("all", "sequence")


def another_value(option: Option) -> float | int | str:
    """A valid value of ``option`` other than its default."""
    if option.choices:
        return next(choice for choice in option.choices if choice != option.default)
    if isinstance(option.default, int):
        return option.default + 1
    return option.default / 2 if option.default else 0.5


def test_the_objective_takes_every_option_from_the_config() -> None:
    changed: dict[str, object] = {
        name: another_value(option) for name, (_, _, option) in option_fields().items()
    }
    changed |= {"ce_scope": "answer", "group": "batch"}
    assert set(changed) == set(OBJECTIVE_OPTIONS)
    objective = build_objective(resolve_config(overrides={"loss": "ce=0.5,focal=0.5", **changed}))
    assert {name: getattr(objective, name) for name in changed} == changed
    assert objective.weights == {"ce": 0.5, "focal": 0.5}


def test_flags_override_the_file_which_overrides_the_preset(tmp_path: Path) -> None:
    path = write(tmp_path, "preset: paper-gsm8k\nlearning_rate: 3.0e-4\nbatch_size: 8\n")
    config = resolve_config(path, {"batch_size": 16})
    assert config.preset == "paper-gsm8k"
    assert config.epochs == 10  # from the preset
    assert config.learning_rate == 3e-4  # the file beats the preset's 1e-5
    assert config.batch_size == 16  # the flag beats the file
    assert config.seed == 42 and config.warmup_steps == 500 and config.weight_decay == 0.01


def test_paper_presets_hold_the_published_settings() -> None:
    expected = {
        "paper-gsm8k": ("gsm8k", 10, 2, 1, 1e-5, 128, "fp16"),
        "paper-mathqa": ("mathqa", 2, 2, 1, 1e-4, 1024, "fp16"),
        "paper-openbookqa": ("openbookqa", 10, 2, 1, 1e-4, 128, "fp16"),
        "paper-hellaswag": ("hellaswag", 1, 1, 2, 1e-4, 256, "bf16"),
    }
    assert set(expected) <= set(preset_names())
    for name, values in expected.items():
        config = resolve_config(overrides={"preset": name})
        got = (
            config.task,
            config.epochs,
            config.batch_size,
            config.grad_accum,
            config.learning_rate,
            config.max_length,
            config.dtype,
        )
        assert got == values, name
        assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.05)
        assert config.target_modules is None  # every linear layer
        assert config.group == "batch"


def test_unknown_key_in_a_file_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "task: arith\nlerning_rate: 0.1\n")
    with pytest.raises(
        ConfigError,
        match=r"config.yaml, line 2: unknown key 'lerning_rate'; "
        r"did you mean 'learning_rate'\?",
    ):
        resolve_config(path)


def test_unknown_override_and_preset_suggest_the_closest_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        resolve_config(overrides={"batch_sise": 2})
    with pytest.raises(
        ConfigError, match="unknown preset 'paper-gsm8'; did you mean 'paper-gsm8k'"
    ):
        resolve_config(overrides={"preset": "paper-gsm8"})


def test_bad_values_name_the_field_and_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 1: field 'batch_size' expects an integer"):
        resolve_config(write(tmp_path, "batch_size: four\n"))
    with pytest.raises(ConfigError, match=r"adapter='lroa' is not one of .* did you mean 'lora'"):
        resolve_config(overrides={"adapter": "lroa"})
    with pytest.raises(ConfigError, match="field 'batch_size' must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="overwrite and resume"):
        TrainConfig(overwrite=True, resume=True)
    with pytest.raises(ConfigError, match="expected a mapping"):
        resolve_config(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": True}, "field 'batch_size' expects an integer, got True"),
        ({"learning_rate": "fast"}, "field 'learning_rate' expects a number, got 'fast'"),
        ({"learning_rate": -1e-4}, "field 'learning_rate' must be >= 0, got -0.0001"),
        ({"epochs": "inf"}, "field 'epochs' expects a finite number, got inf"),
        ({"lora_dropout": 1.0}, "field 'lora_dropout' must be < 1, got 1.0"),
        ({"warmup_steps": -1}, "field 'warmup_steps' must be >= 0, got -1"),
        ({"max_steps": 0}, "field 'max_steps' must be >= 1, got 0"),
        ({"gradient_checkpointing": "maybe"}, "field 'gradient_checkpointing' expects true or"),
        ({"model": ["a"]}, "field 'model' expects a string, got \\['a'\\]"),
        (
            {"report_to": "wandb,tensorbord"},
            "report_to='tensorbord' is not one of .* 'tensorboard'",
        ),
        (
            {"task_options": ["train_size"]},
            "field 'task_options' expects key=value, got 'train_size'",
        ),
    ],
)
def test_each_field_checks_its_type_and_range(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^overrides: {message}"):
        resolve_config(overrides=overrides)


def test_the_line_named_is_the_bad_value_s(tmp_path: Path) -> None:
    path = write(tmp_path, "loss: ce=1\nlora_r: 8\nlora_dropout: 2\n")
    with pytest.raises(
        ConfigError, match=r"config\.yaml, line 3: field 'lora_dropout' must be < 1"
    ):
        resolve_config(path)


def test_values_are_converted_to_the_field_types(tmp_path: Path) -> None:
    # PyYAML reads 1e-4 as a string; command-line values arrive as strings.
    path = write(tmp_path, "learning_rate: 1e-4\ntask_options: {train_size: 50}\n")
    config = resolve_config(
        path,
        {
            "gradient_checkpointing": "yes",
            "target_modules": "q_proj, v_proj",
            "report_to": "none",
            "eval_split": "none",
            "max_steps": "12",
        },
    )
    assert config.learning_rate == pytest.approx(1e-4)
    assert config.task_options == {"train_size": 50}
    assert config.gradient_checkpointing is True
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.report_to == [] and config.eval_split is None and config.max_steps == 12
    options = resolve_config(overrides={"task_options": ["train_size=8", "target=full"]})
    assert options.task_options == {"train_size": 8, "target": "full"}


def test_resolved_config_round_trips_through_a_run_folder(tmp_path: Path) -> None:
    config = resolve_config(
        overrides={"preset": "paper-hellaswag", "task_options": {"a": 1}, "target_modules": ["x"]}
    )
    write_config(config, tmp_path / "config.yaml")
    assert load_run_config(tmp_path) == config


def test_default_run_folder_names_task_model_loss_and_seed() -> None:
    config = TrainConfig(task="arith", model="/models/Tiny", loss="ce=0.6,lovasz=0.4", seed=3)
    assert config.run_dir == Path("runs/arith-tiny-ce-0.6-lovasz-0.4-seed3")
    assert TrainConfig(output_dir="x/y").run_dir == Path("x/y")
