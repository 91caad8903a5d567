"""train(): the run folder, best checkpoint, resume, refusals and faults, on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from seglm.checkpoints import checkpoint_problem
from seglm.config import ConfigError, load_run_config, resolve_config
from seglm.train import train
from seglm.trainer import NonFiniteLossError

from ._helpers import log_events


def run(config: dict[str, Any], **overrides: Any) -> Any:
    return train(resolve_config(overrides={**config, **overrides}), progress=False)


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def test_run_folder_holds_config_weights_tokenizer_state_logs_and_report(
    tiny_config: dict[str, Any],
) -> None:
    result = run(tiny_config, loss="ce=0.6,lovasz=0.4", gradient_checkpointing=True)
    folder = result.run_dir
    assert load_run_config(folder) == resolve_config(
        overrides={**tiny_config, "loss": "ce=0.6,lovasz=0.4", "gradient_checkpointing": True}
    )
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "trainer_state.json",
        "train_report.json",
        "checkpoint-2",
        "checkpoint-4",
    ):
        assert (folder / name).exists(), name
    # Without a validation split the root holds the last step's weights.
    assert result.final_weights == "last"
    final = adapter(folder)
    assert all(torch.equal(final[k], v) for k, v in adapter(folder / "checkpoint-4").items())
    # LoRA's B matrices start at zero: training through checkpointed layers moved them.
    assert any(v.abs().sum() > 0 for k, v in final.items() if "lora_B" in k)

    steps = [e for e in log_events(folder) if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    for event in steps:
        # One micro-batch per step: the logged loss is exactly the weighted components.
        expected = 0.6 * event["loss_ce"] + 0.4 * event["loss_lovasz"]
        assert event["loss"] == pytest.approx(expected, rel=1e-4)

    report = json.loads((folder / "train_report.json").read_text())
    assert report["data"]["train"]["examples"] == 24
    assert report["data"]["train"]["kept"] == 24
    assert report["global_step"] == 4
    assert 0 < report["adapter"]["trainable_params"] < report["adapter"]["total_params"]
    assert "model.layers.0.mlp.down_proj" in report["adapter"]["target_modules"]
    assert report["peak_rss_mib"] > 0 and report["steps_per_second"] > 0
    assert report["distributed_type"] == "NO" and "fsdp_version" not in report


def test_best_checkpoint_by_validation_loss_ends_at_the_root(tiny_config: dict[str, Any]) -> None:
    result = run(
        tiny_config,
        eval_split="auto",
        eval_steps=1,
        save_steps=None,
        max_steps=4,
        learning_rate=0.3,
        save_total_limit=1,
    )
    evals = {e["step"]: e["eval_loss"] for e in log_events(result.run_dir) if "eval_loss" in e}
    assert sorted(evals) == [1, 2, 3, 4]
    best_step = min(evals, key=evals.__getitem__)
    assert result.final_weights == "best"
    assert Path(result.best_checkpoint).name == f"checkpoint-{best_step}"
    assert result.metrics["best_eval_loss"] == pytest.approx(evals[best_step])
    best = adapter(Path(result.best_checkpoint))
    final = adapter(result.run_dir)
    assert all(torch.equal(final[k], v) for k, v in best.items())


def test_hellaswag_never_selects_checkpoints_on_its_test_data(
    tiny_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HellaSwag's test is the official validation set; the paper selected on it too
    # (docs/method.md, "Known defects", item 7).
    monkeypatch.setenv("SEGLM_ALLOW_ROW_COUNT_MISMATCH", "1")  # 80 train rows, not 39905
    data = tmp_path / "data" / "hellaswag"
    data.mkdir(parents=True)
    record = {"activity_label": "Roofing", "endings": ["a.", "b.", "c.", "d."]}
    lines = [{**record, "ind": i, "ctx": f"Roof {i}: he", "label": i % 4} for i in range(80)]
    (data / "hellaswag_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (data / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:8]))
    config = {
        **tiny_config,
        "task": "hellaswag",
        "task_options": {},
        "data_dir": str(tmp_path / "data"),
        "eval_split": "auto",
        "eval_steps": 2,
        "save_steps": None,
    }
    result = run(config)
    selection = result.report["checkpoint_selection"]
    assert selection["final_weights"] == "best" and selection["split"] == "validation"
    assert "held out" in selection["holds"] and "not the test data" in selection["holds"]
    assert selection["examples"] == 2  # 2.5% of the 80 train examples
    report = json.loads((result.run_dir / "train_report.json").read_text())
    assert report["checkpoint_selection"] == selection
    with pytest.raises(ConfigError, match=r"'test' is task 'hellaswag'.s test data"):
        run(config, eval_split="test", output_dir=str(tmp_path / "on-test"))
    last = run(config, eval_split="test", final_weights="last", output_dir=str(tmp_path / "last"))
    assert last.report["checkpoint_selection"] == {
        "final_weights": "last",
        "by": "the last step (final_weights: last)",
    }


class Interrupt(Exception):
    pass


class InterruptAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise Interrupt


KILL_WORKER = Path(__file__).parent / "kill_worker.py"


def train_and_kill(config: dict[str, Any], step: int, point: str, folder: Path) -> None:
    """Train ``config`` in a process of its own and SIGKILL it while it saves checkpoint-STEP."""
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(config))
    command = [sys.executable, str(KILL_WORKER), str(config_file), str(step), point]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == -signal.SIGKILL, completed.stderr[-3000:]


@pytest.mark.parametrize("point", ["empty", "torn_state"])
def test_a_kill_while_saving_a_checkpoint_resumes_from_the_one_before(
    tiny_config: dict[str, Any], tmp_path: Path, point: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = {**tiny_config, "batch_size": 2, "grad_accum": 2, "max_steps": 8}
    whole = run(config, output_dir=str(tmp_path / "whole"))
    killed = {**config, "output_dir": str(tmp_path / "killed")}
    train_and_kill(killed, 6, point, tmp_path)
    run_dir = tmp_path / "killed"
    assert checkpoint_problem(run_dir / "checkpoint-4") is None
    problem = checkpoint_problem(run_dir / "checkpoint-6")
    if point == "empty":
        assert problem == "no trainer_state.json"
    else:
        assert (run_dir / "checkpoint-6" / "adapter_model.safetensors").is_file()
        assert problem is not None and problem.startswith("trainer_state.json is not readable")
    with caplog.at_level(logging.WARNING, logger="seglm.train"):
        resumed = run(killed, resume=True)
    assert "resume: skipped checkpoint-6 (" in caplog.text
    assert "resuming from checkpoint-4" in caplog.text
    assert resumed.report["resumed_from"].endswith("checkpoint-4")
    expected, got = adapter(whole.run_dir), adapter(resumed.run_dir)
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[name], value) for name, value in expected.items())
    # The report counts the killed process's 4 steps, as the checkpoint recorded them.
    assert [s["steps"] for s in resumed.report["sessions"]] == [[0, 4], [4, 8]]
    assert resumed.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], rel=1e-6)
    # The step-6 checkpoint was saved again, whole; each step is logged once.
    assert checkpoint_problem(run_dir / "checkpoint-6") is None
    assert [e["step"] for e in log_events(run_dir) if "loss" in e] == list(range(1, 9))


def test_resume_without_a_complete_checkpoint_says_so(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    train_and_kill({**tiny_config, "max_steps": 4}, 2, "empty", tmp_path)
    with pytest.raises(ConfigError) as error:
        run(tiny_config, resume=True)
    assert "has no complete checkpoint yet (incomplete, cut short while saving: " in str(
        error.value
    )
    assert "checkpoint-2 (no trainer_state.json)); start again with --overwrite" in str(error.value)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(
    tiny_config: dict[str, Any], tmp_path: Path, group_by_length: bool
) -> None:
    # 24 examples, 2 x 2 accumulation: 6 steps an epoch; stop in the first epoch after the
    # step-4 checkpoint, resume into the second. LoRA dropout makes the RNG state matter, and
    # so does the length-grouped order, drawn anew each epoch.
    config = {
        **tiny_config,
        "batch_size": 2,
        "grad_accum": 2,
        "max_steps": 8,
        "group_by_length": group_by_length,
    }
    whole = run(config, output_dir=str(tmp_path / "whole"))
    parted = {**config, "output_dir": str(tmp_path / "parted")}
    with pytest.raises(Interrupt):
        train(resolve_config(overrides=parted), callbacks=[InterruptAt(5)], progress=False)
    assert not (tmp_path / "parted" / "adapter_model.safetensors").exists()
    resumed = run(parted, resume=True)
    assert resumed.report["resumed_from"].endswith("checkpoint-4")
    expected, got = adapter(whole.run_dir), adapter(resumed.run_dir)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)
    # The log of the resumed run has each step once, with the uninterrupted run's losses.
    logged = [e for e in log_events(resumed.run_dir) if "loss" in e]
    assert [e["step"] for e in logged] == list(range(1, 9))
    expected_losses = [e["loss"] for e in log_events(whole.run_dir) if "loss" in e]
    assert [e["loss"] for e in logged] == pytest.approx(expected_losses, rel=1e-5)
    # The report covers the whole run, not only the part after the resume.
    report = json.loads((resumed.run_dir / "train_report.json").read_text())
    assert report["resumed_from_step"] == 4 and report["global_step"] == 8
    assert [s["steps"] for s in report["sessions"]] == [[0, 4], [4, 8]]
    assert [s["steps"] for s in whole.report["sessions"]] == [[0, 8]]
    assert resumed.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], rel=1e-6)
    first, second = report["sessions"]
    assert first["train_loss"] == pytest.approx(sum(expected_losses[:4]) / 4, rel=1e-6)
    assert second["train_loss"] == pytest.approx(sum(expected_losses[4:]) / 4, rel=1e-6)
    assert min(first["wall_time_s"], first["train_runtime_s"], second["train_runtime_s"]) > 0
    assert report["wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"])
    assert report["train_runtime_s"] == pytest.approx(
        first["train_runtime_s"] + second["train_runtime_s"], abs=2e-3
    )
    assert report["steps_per_second"] == pytest.approx(8 / report["train_runtime_s"], rel=1e-2)


def test_full_fine_tuning_with_bf16_autocast_and_accumulation(tiny_config: dict[str, Any]) -> None:
    result = run(tiny_config, adapter="full", dtype="bf16", grad_accum=2, batch_size=2)
    weights = load_file(result.run_dir / "model.safetensors")
    assert not (result.run_dir / "adapter_model.safetensors").exists()
    report = result.report["adapter"]
    assert report["trainable_params"] == report["total_params"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    assert math.isfinite(result.metrics["train_loss"])


class CorruptAfterSave(TrainerCallback):
    """Poisons the weights right after the step-2 checkpoint is written."""

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        if state.global_step == 2:
            with torch.no_grad():
                for parameter in model.parameters():
                    if parameter.requires_grad:
                        parameter.fill_(math.nan)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(
    tiny_config: dict[str, Any],
) -> None:
    config = resolve_config(overrides={**tiny_config, "loss": "ce=0.6,focal=0.4"})
    with pytest.raises(NonFiniteLossError, match=r"step 3: component\(s\) ce, focal"):
        train(config, callbacks=[CorruptAfterSave()], progress=False)
    saved = adapter(config.run_dir / "checkpoint-2")
    assert saved and all(torch.isfinite(v).all() for v in saved.values())
    assert not (config.run_dir / "adapter_model.safetensors").exists()


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the setup was checked")

    monkeypatch.setattr("seglm.adapters.load_base_model", refuse)


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model": "smollm2-135m-instuct"},
            "unknown model .* did you mean 'smollm2-135m-instruct'",
        ),
        ({"model": "/no/such/folder"}, "model folder '/no/such/folder' does not exist"),
        ({"loss": "ce=0.6,lovas=0.4"}, "unknown loss 'lovas'; did you mean 'lovasz'"),
        ({"scheduler": "linaer"}, "training arguments: .*linaer"),
        ({"task": "arth"}, "unknown task 'arth'.*did you mean 'arith'"),
        ({"task_options": {"train_sise": 3}}, "task_options: .*train_sise"),
        ({"train_split": "training"}, "has no split 'training'"),
        ({"max_length": 12}, "every one of 24 examples was dropped"),
        ({"adapter": "qlora"}, "adapter 'qlora' needs"),
        ({"save_steps": 3, "eval_split": "auto", "eval_steps": 2}, "multiple of eval_steps"),
        ({"resume": True}, "holds no run"),
    ],
)
def test_bad_setups_fail_before_the_model_loads(
    tiny_config: dict[str, Any], overrides: dict[str, Any], message: str
) -> None:
    if overrides.get("adapter") == "qlora" and torch.cuda.is_available():
        pytest.skip("QLoRA may be available on a CUDA machine")
    with pytest.raises(ConfigError, match=message):
        run(tiny_config, **overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 works on CUDA")
def test_fp16_on_cpu_is_refused_with_a_way_out(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"fp16.*needs a CUDA GPU.*--dtype bf16"):
        run(tiny_config, dtype="fp16")


def test_an_output_folder_with_another_run_is_refused_unless_overwrite(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    first = run(tiny_config, max_steps=2)
    with pytest.raises(ConfigError, match=r"different run \(learning_rate: 0.01 -> 0.02\)"):
        run(tiny_config, max_steps=2, learning_rate=0.02)
    with pytest.raises(ConfigError, match="already holds this run: pass --resume"):
        run(tiny_config, max_steps=2)
    with pytest.raises(ConfigError, match=r"resume: .* different run"):
        run(tiny_config, max_steps=2, learning_rate=0.02, resume=True)
    again = run(tiny_config, max_steps=2, learning_rate=0.02, overwrite=True)
    assert again.run_dir == first.run_dir
    assert load_run_config(again.run_dir).learning_rate == 0.02
    assert [e["step"] for e in log_events(again.run_dir) if "loss" in e] == [1, 2]
    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds no seglm run"):
        run(tiny_config, output_dir=str(stranger), overwrite=True)
    assert (stranger / "notes.txt").exists()


def test_the_data_order_depends_on_the_seed_only(
    tiny_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import seglm.data

    batches: list[list[list[int]]] = []

    class RecordingCollator(seglm.data.DataCollator):
        def __call__(self, features: Any) -> dict[str, torch.Tensor]:
            batches[-1].append([list(f["input_ids"]) for f in features])
            return super().__call__(features)

    monkeypatch.setattr(seglm.data, "DataCollator", RecordingCollator)
    orders = []
    for name, overrides in {
        "ce": {"loss": "ce"},
        "lovasz": {"loss": "ce=0.6,lovasz=0.4"},
        "seed": {"loss": "ce", "seed": 43},
    }.items():
        batches.append([])
        run(tiny_config, output_dir=str(tmp_path / name), **overrides)
        orders.append(batches[-1])
    assert len(orders[0]) >= 4  # the data loader may fetch one batch ahead
    assert orders[0] == orders[1]  # another loss, same seed: the same batches in the same order
    assert orders[0] != orders[2]


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed"
)
def test_a_tracker_without_its_package_is_refused(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        run(tiny_config, report_to="tensorboard")


def test_group_by_length_batches_similar_lengths(tiny_config: dict[str, Any]) -> None:
    from seglm.data import DataCollator
    from seglm.train import load_checked_tokenizer, prepare_data, training_arguments
    from seglm.trainer import SegLMTrainer

    widths = {}
    for grouped in (False, True):
        # Groups form within mega-batches of up to 50 batches: enough examples for several.
        options = {**tiny_config["task_options"], "train_size": 200}
        settings = {**tiny_config, "task_options": options, "max_length": 512}
        settings["group_by_length"] = grouped
        config = resolve_config(overrides=settings)
        tokenizer = load_checked_tokenizer(config)
        data = prepare_data(config, tokenizer)
        trainer = SegLMTrainer(
            model=torch.nn.Linear(1, 1),  # the sampler needs no model
            args=training_arguments(config, has_eval=False, progress=False),
            train_dataset=data.train,
            data_collator=DataCollator(tokenizer.pad_token_id),
            objective="ce",
            fused_loss=False,
        )
        batches = list(trainer.get_train_dataloader())
        ids = sorted(
            tuple(row[mask.bool()].tolist())
            for batch in batches
            for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        )
        assert ids == sorted(tuple(f["input_ids"]) for f in data.train)  # every example once
        widths[grouped] = sum(b["input_ids"].numel() for b in batches)
    assert widths[True] < 0.9 * widths[False]  # measured: 13% fewer padded tokens


def test_terms_of_two_scopes_train_and_log_each(tiny_config: dict[str, Any]) -> None:
    result = run(tiny_config, loss="ce=0.6,ce@answer=0.4", max_steps=2)
    steps = [e for e in log_events(result.run_dir) if "loss" in e]
    for event in steps:
        assert event["loss"] == pytest.approx(
            0.6 * event["loss_ce"] + 0.4 * event["loss_ce@answer"], rel=1e-4
        )
        assert event["loss_ce"] != pytest.approx(event["loss_ce@answer"], rel=1e-3)
    assert result.report["data"]["train"]["ce_scope"] == "all"  # the prompt stays supervised
    folder = Path(tiny_config["output_dir"]).parent / "answer-only"
    answer_only = run(tiny_config, loss="ce@answer=1", max_steps=1, output_dir=str(folder))
    assert answer_only.report["data"]["train"]["ce_scope"] == "answer"
