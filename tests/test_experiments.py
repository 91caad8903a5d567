"""seglm.experiments: grids of cells, resume, failures, grid identity and bad input.

One test trains and evaluates a tiny random Llama for real; the others use fast stand-ins for
training and evaluation (grid_fakes), which write the same files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from grid_fakes import FakeRuns, fake_jobs
from safetensors.torch import save_file

from seglm.experiments import (
    Cell,
    EvalConfig,
    Grid,
    GridError,
    cell_config,
    load_grid,
    parse_shard,
    run_grid,
    summarize,
)
from seglm.runs import GRID_FILE

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_grid(model: Path, **changes: Any) -> Grid:
    values: dict[str, Any] = {
        "tasks": ["arith"],
        "models": [str(model)],
        "losses": ["ce", "lovasz"],
        "seeds": [0, 1],
        "train": {
            "task_options": {"train_size": 16, "validation_size": 4, "test_size": 6},
            "max_length": 96,
            "max_steps": 2,
            "batch_size": 4,
            "learning_rate": 1e-2,
            "eval_split": "none",
            "logging_steps": 1,
        },
        "eval": EvalConfig(split="test", limit=3, max_new_tokens=4),
        **changes,
    }
    return Grid(**values)


def test_tiny_grid_trains_evaluates_and_summarises(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    result = run_grid(tiny_grid(tiny_model, base=True), root, progress=False)
    assert [o.status for o in result.outcomes] == ["finished"] * 5
    model = tiny_model.name
    cell = root / "arith" / model / "lovasz-lam0.6" / "seed1"
    for name in ("config.yaml", "adapter_model.safetensors", "log.jsonl", "train_report.json"):
        assert (cell / name).is_file(), name
    for name in ("predictions.jsonl", "metrics.json", "eval_config.json"):
        assert (cell / name).is_file(), name
    assert "loss: ce=0.6,lovasz=0.4" in (cell / "config.yaml").read_text()
    assert "seed: 1" in (cell / "config.yaml").read_text()
    assert (root / "arith" / model / "ce-lam1" / "seed0" / "metrics.json").is_file()
    base = root / "arith" / model / "base"
    assert (base / "metrics.json").is_file() and not (base / "config.yaml").exists()
    # Every cell evaluated the same three examples.
    ids = {
        tuple(json.loads(line)["id"] for line in (root / o.cell.relative_dir / "predictions.jsonl")
              .read_text().splitlines())
        for o in result.outcomes
    }  # fmt: skip
    assert ids == {("arith/test/0", "arith/test/1", "arith/test/2")}
    # Same seed, same data order: the first logged CE term is the same whatever the loss, since
    # both start from the same weights on the same first batch.
    first = {}
    for arm in ("ce-lam1", "lovasz-lam0.6"):
        log = (root / "arith" / model / arm / "seed0" / "log.jsonl").read_text().splitlines()
        first[arm] = json.loads(log[0])["loss_ce"]
    assert first["ce-lam1"] == pytest.approx(first["lovasz-lam0.6"], rel=1e-5)

    rows = json.loads((root / "summary.json").read_text())["cells"]
    assert [row["status"] for row in rows] == ["finished"] * 5
    assert {row["arm"] for row in rows} == {"base", "ce-lam1", "lovasz-lam0.6"}
    with (root / "summary.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and "exact_match" in table[0] and table[0]["status"] == "finished"
    assert all(row["n"] == "3" for row in table)


def test_rerun_skips_finished_cells_and_extends(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    run_grid(tiny_grid(tiny_model), root, progress=False)
    assert len(fakes.trained) == 4 and len(fakes.evaluated) == 4
    again = run_grid(tiny_grid(tiny_model), root, progress=False)
    assert [o.status for o in again.outcomes] == ["skipped"] * 4
    assert len(fakes.trained) == 4
    # More seeds and a new loss: only the new cells run; the grid file keeps the union.
    extended = run_grid(
        tiny_grid(tiny_model, seeds=[0, 1, 2], losses=["ce", "focal"]), root, progress=False
    )
    assert sorted(
        str(o.cell.relative_dir) for o in extended.outcomes if o.status == "finished"
    ) == [
        f"arith/{tiny_model.name}/ce-lam1/seed2",
        f"arith/{tiny_model.name}/focal-lam0.6/seed0",
        f"arith/{tiny_model.name}/focal-lam0.6/seed1",
        f"arith/{tiny_model.name}/focal-lam0.6/seed2",
    ]
    grid = json.loads((root / GRID_FILE).read_text())
    assert grid["losses"] == ["ce", "lovasz", "focal"] and grid["seeds"] == [0, 1, 2]
    statuses = {row["dir"].split("/", 2)[2]: row["status"] for row in summarize(root)}
    assert statuses["lovasz-lam0.6/seed2"] == "pending"  # in the union, never asked for
    assert statuses["focal-lam0.6/seed2"] == "finished"


def test_trained_but_unevaluated_cell_is_only_evaluated(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    run_grid(tiny_grid(tiny_model, seeds=[0]), root, progress=False)
    (root / "arith" / tiny_model.name / "ce-lam1" / "seed0" / "metrics.json").unlink()
    run_grid(tiny_grid(tiny_model, seeds=[0]), root, progress=False)
    assert len(fakes.trained) == 2 and len(fakes.evaluated) == 3


def test_a_cell_killed_while_saving_its_first_checkpoint_starts_again(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kill -9 during a save leaves an empty checkpoint folder: it cannot be resumed from, so
    # the rerun trains the cell again instead of failing on every rerun.
    fakes = FakeRuns().install(monkeypatch)
    calls: list[tuple[bool, bool]] = []

    def train(config: Any, progress: bool = True) -> None:
        calls.append((config.resume, config.overwrite))
        fakes.train(config, progress)

    monkeypatch.setattr("seglm.train.train", train)
    root = tmp_path / "runs"
    grid = tiny_grid(tiny_model, seeds=[0], losses=["ce"])
    folder = root / "arith" / tiny_model.name / "ce-lam1" / "seed0"

    def killed_while_saving() -> Path:
        for name in ("metrics.json", "train_report.json"):
            (folder / name).unlink()
        for checkpoint in folder.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
        (folder / "checkpoint-2").mkdir()
        return folder / "checkpoint-2"

    run_grid(grid, root, progress=False)
    assert (folder / "config.yaml").is_file()
    killed_while_saving()
    run_grid(grid, root, progress=False)
    assert calls[1:] == [(False, True)]
    # A complete checkpoint (the Trainer writes trainer_state.json last) is resumed from.
    checkpoint = killed_while_saving()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    save_file({"w": torch.zeros(2)}, checkpoint / "adapter_model.safetensors")
    run_grid(grid, root, progress=False)
    assert calls[1:] == [(False, True), (True, False)]


def test_failed_cell_is_recorded_and_the_grid_goes_on(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeRuns(fail=lambda arm: arm.startswith("lovasz")).install(monkeypatch)
    root = tmp_path / "runs"
    result = run_grid(tiny_grid(tiny_model), root, progress=False)
    assert [o.status for o in result.outcomes] == ["finished", "failed", "finished", "failed"]
    assert result.outcomes[1].error == "RuntimeError: training of lovasz-lam0.6 diverged"
    failed = root / "arith" / tiny_model.name / "lovasz-lam0.6" / "seed0"
    assert "Traceback" in (failed / "error.txt").read_text()
    rows = {row["dir"]: row for row in summarize(root)}
    row = rows[f"arith/{tiny_model.name}/lovasz-lam0.6/seed0"]
    assert row["status"] == "failed" and "diverged" in row["error"]
    # A rerun retries the failed cells (the half-made run folder is started again).
    fakes = FakeRuns().install(monkeypatch)
    retry = run_grid(tiny_grid(tiny_model), root, progress=False)
    assert [o.status for o in retry.outcomes] == ["skipped", "finished", "skipped", "finished"]
    assert len(fakes.trained) == 2 and not (failed / "error.txt").exists()


def test_incompatible_grid_is_refused_naming_the_keys(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    run_grid(tiny_grid(tiny_model, seeds=[0]), root, progress=False)
    changed = tiny_grid(tiny_model, seeds=[0], eval=EvalConfig(split="test", limit=5))
    changed.train["learning_rate"] = 0.5
    with pytest.raises(GridError) as error:
        run_grid(changed, root, progress=False)
    message = str(error.value)
    assert "train.learning_rate: 0.01 -> 0.5" in message
    assert "eval.limit: 3 -> 5" in message
    assert len(fakes.trained) == 2
    # Only the evaluation batch size may change (it changes speed, not results).
    faster = tiny_grid(
        tiny_model,
        seeds=[0],
        eval=EvalConfig(split="test", limit=3, max_new_tokens=4, batch_size=2),
    )
    assert [o.status for o in run_grid(faster, root, progress=False).outcomes] == ["skipped"] * 2


def test_folder_that_is_not_a_grid_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GridError, match=r"not empty and seglm did not make it \(notes\.txt is"):
        run_grid(tiny_grid(tiny_model), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"losses": []}, "empty grid: 'losses' and 'arms'"),
        ({"arms": {"base": "ce@answer=1"}}, "'base' is not a usable arm name"),
        ({"arms": {"ce-lam0.5": "ce=1"}}, "not LOSS-lamλ"),
        ({"arms": {"a/b": "ce=1"}}, "'a/b' is not a usable arm name"),
        ({"arms": {"x": "ce=1"}}, "arms: x trains the same loss as the arm 'ce-lam1'"),
        ({"arms": {"x": "lovasz=0.4,ce=0.6"}}, "same loss as the arm 'lovasz-lam0.6'"),
        ({"arms": {"x": "ce@answer=1", "y": "ce@answer=1.0"}}, "y trains the same loss as"),
        ({"arms": {"x": "ce@everything=1"}}, "arms: x: term 'ce@everything=1'"),
        ({"seeds": []}, "empty grid: 'seeds'"),
        ({"losses": ["ce", "lovaz"]}, "unknown loss 'lovaz'; did you mean 'lovasz'"),
        ({"lambdas": [1.2]}, "λ is the weight of CE, in \\[0, 1\\)"),
        ({"seeds": [-1]}, r"key 'seeds\[0\]' must be >= 0, got -1"),
        ({"seeds": [True]}, r"key 'seeds\[0\]' expects an integer, got True"),
        ({"lambdas": "0.6,x"}, r"key 'lambdas\[1\]' expects a number, got 'x'"),
        ({"arms": {"x": ["ce"]}}, r"key 'arms\[x\]' expects a string"),
        ({"eval": {"limit": 0}}, r"key 'eval\[limit\]' must be >= 1, got 0"),
        ({"eval": {"scoring": "both", "dtype": "fp8"}}, "dtype='fp8' is not one of"),
        ({"train": {"loss": "ce"}}, "train: loss is set by each cell"),
        ({"train": {"learning_rat": 1.0}}, "did you mean 'learning_rate'"),
        ({"train": {"max_steps": "many"}}, "max_steps' expects an integer"),
    ],
)
def test_bad_grids_are_refused(tiny_model: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(GridError, match=message):
        tiny_grid(tiny_model, **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": ["smollm2-135m-instrct"]}, "did you mean 'smollm2-135m-instruct'"),
        ({"models": ["/no/such/model"]}, "'/no/such/model' does not exist"),
        ({"models": ["org/no-such-model"]}, "model 'org/no-such-model' cannot be loaded"),
        ({"tasks": ["arithmetic"]}, "unknown task 'arithmetic'"),
        ({"eval": EvalConfig(split="dev")}, "has no split 'dev'"),
        ({"train": {"dtype": "fp16"}}, "fp16"),
    ],
)
def test_missing_model_task_or_split_is_refused_before_training(
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
    message: str,
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    grid = tiny_grid(tiny_model, **changes)
    with pytest.raises(GridError, match=message):
        run_grid(grid, tmp_path / "runs", progress=False)
    assert fakes.trained == [] and not (tmp_path / "runs").exists()


def test_cells_order_names_and_loss_specs() -> None:
    grid = Grid(
        tasks=["arith"], models=["org/Some-Model"], losses=["ce", "gdice"], lambdas=[0.6, 0.8],
        seeds=[3], base=True,
    )  # fmt: skip
    cells = grid.cells()
    assert [str(cell.relative_dir) for cell in cells] == [
        "arith/some-model/base",
        "arith/some-model/ce-lam1/seed3",
        "arith/some-model/gdice-lam0.6/seed3",
        "arith/some-model/gdice-lam0.8/seed3",
    ]
    assert [cell.loss_spec for cell in cells[1:]] == [
        "ce=1",
        "ce=0.6,gdice=0.4",
        "ce=0.8,gdice=0.2",
    ]
    assert Cell("arith", "m", "lovasz", 0.0, 0).loss_spec == "ce=0,lovasz=1"


def test_named_arms_are_cells_with_their_own_spec() -> None:
    grid = Grid(
        tasks=["arith"], models=["m"], losses=["ce", "lovasz"], seeds=[0, 1],
        arms={"ce-answer": "ce@ANSWER = 1", "control": "ce=0.6, ce@answer=0.4"},
    )  # fmt: skip
    assert grid.arms == {"ce-answer": "ce@answer=1", "control": "ce=0.6,ce@answer=0.4"}
    assert [(str(c.relative_dir), c.loss_spec) for c in grid.cells()][:4] == [
        ("arith/m/ce-lam1/seed0", "ce=1"),
        ("arith/m/ce-answer/seed0", "ce@answer=1"),
        ("arith/m/control/seed0", "ce=0.6,ce@answer=0.4"),
        ("arith/m/lovasz-lam0.6/seed0", "ce=0.6,lovasz=0.4"),
    ]
    assert len(grid.cells()) == 8
    only_arms = Grid(tasks=["arith"], models=["m"], losses=[], arms={"d": "dft=1"}, seeds=[0])
    assert [c.arm for c in only_arms.cells()] == ["d"]


def test_named_arms_extend_a_runs_folder_and_keep_their_spec(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    run_grid(tiny_grid(tiny_model, seeds=[0], arms={"ce-answer": "ce@answer=1"}), root,
             progress=False)  # fmt: skip
    assert len(fakes.trained) == 3
    config = json.loads((root / GRID_FILE).read_text())
    assert config["arms"] == {"ce-answer": "ce@answer=1"}
    run_grid(tiny_grid(tiny_model, seeds=[0], arms={"control": "ce=0.6,ce@answer=0.4"}), root,
             progress=False)  # fmt: skip
    assert len(fakes.trained) == 4
    config = json.loads((root / GRID_FILE).read_text())
    assert config["arms"] == {"ce-answer": "ce@answer=1", "control": "ce=0.6,ce@answer=0.4"}
    trained = cell_config(
        tiny_grid(tiny_model, arms=config["arms"]),
        Cell("arith", str(tiny_model), "control", None, 0, config["arms"]["control"]),
        root,
    )
    assert trained.loss == "ce=0.6,ce@answer=0.4"
    with pytest.raises(GridError, match=r"arm 'control' trained 'ce=0\.6,ce@answer=0\.4' there"):
        run_grid(tiny_grid(tiny_model, seeds=[0], arms={"control": "ce=0.5,ce@answer=0.5"}),
                 root, progress=False)  # fmt: skip


def test_grid_file_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(
        "task: arith\nmodel: smollm2-135m-instruct\nlosses: [ce, focal]\nlambdas: [0.6, 0.8]\n"
        "seeds: 2\ntrain:\n  max_steps: 50\neval:\n  limit: 100\n  dtype: bf16\n"
    )
    grid = load_grid(path)
    assert grid.tasks == ["arith"] and grid.seeds == [0, 1] and grid.lambdas == [0.6, 0.8]
    assert grid.train == {"max_steps": 50} and grid.eval == EvalConfig(limit=100, dtype="bf16")
    path.write_text("task: arith\nmodel: m\nlosses: [ce]\nseed: 3\n")
    with pytest.raises(GridError, match=f"{path}: unknown key 'seed'"):
        load_grid(path)
    path.write_text("task: arith\nmodel: m\nlosses: [ce]\neval:\n  limt: 3\n")
    with pytest.raises(GridError, match="eval: unknown key 'limt'"):
        load_grid(path)
    path.write_text("tasks: arith\nlosses: [ce]\n")
    with pytest.raises(GridError, match="missing 'models'"):
        load_grid(path)


def test_seeds_and_shards_parse() -> None:
    def seeds(value: Any) -> list[int]:
        return Grid(tasks=["arith"], models=["m"], losses=["ce"], seeds=value).seeds

    assert seeds(3) == [0, 1, 2] and seeds("2") == [0, 1]
    assert seeds("42,43") == [42, 43] and seeds("42,") == [42] and seeds([7]) == [7]
    with pytest.raises(GridError, match="a count of seeds must be >= 1, got 0"):
        seeds(0)
    with pytest.raises(GridError, match=r"key 'seeds\[0\]' expects an integer, got 'x'"):
        seeds("x,1")
    assert parse_shard("1/4") == (1, 4)
    for text in ("4/4", "x", "1"):
        with pytest.raises(GridError, match="shard"):
            parse_shard(text)


def test_shards_split_the_cells(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    for index in range(2):
        run_grid(tiny_grid(tiny_model), root, progress=False, shard=(index, 2))
    assert len(fakes.trained) == 4 and len(set(fakes.trained)) == 4
    assert {row["status"] for row in summarize(root)} == {"finished"}


def test_settings_for_one_model_reach_only_its_cells(tmp_path: Path) -> None:
    grid = Grid(
        tasks=["arith"],
        models=["org/a", "org/b"],
        losses=["ce"],
        train={"learning_rate": 0.001},
        model_train={"org/b": {"target_modules": "q_proj,lm_head", "learning_rate": 0.01}},
    )
    a, b = (cell_config(grid, cell, tmp_path) for cell in grid.cells())
    assert (a.learning_rate, a.target_modules) == (0.001, None)
    assert (b.learning_rate, b.target_modules) == (0.01, ["q_proj", "lm_head"])
    with pytest.raises(GridError, match="model_train: 'org/c' is not one of the grid's models"):
        Grid(tasks=["arith"], models=["org/a"], losses=["ce"], model_train={"org/c": {}})


def test_grid_under_a_two_process_launch(tiny_model: Path, tmp_path: Path) -> None:
    # What `accelerate launch -m seglm compare ...` does on several GPUs, here with two CPU
    # processes (gloo): every cell trains with DDP, each rank evaluates its share, rank 0 writes,
    # and the ranks move from cell to cell together.
    out = tmp_path / "runs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "seglm", "compare", "--model", str(tiny_model), "--losses", "ce,lovasz",
        "--base", "--eval-limit", "2", "--max-new-tokens", "3", "--out", str(out), "--quiet",
        "--train", "max_steps=2", "--train", "batch_size=2", "--train", "eval_split=none",
        "--train", "max_length=96",
        "--train", "task_options={train_size: 8, validation_size: 2, test_size: 2}",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = summarize(out)
    assert [row["status"] for row in rows] == ["finished"] * 3
    trained = [row for row in rows if row["arm"] != "base"]
    assert all(row["steps"] == 2 for row in trained)
    report = json.loads((out / trained[0]["dir"] / "train_report.json").read_text())
    assert report["world_size"] == 2
    # One announcement per cell: only rank 0 reports.
    assert completed.stderr.count(": finished") == 3


def test_workers_run_cells_side_by_side_each_once_with_a_share_of_the_cores(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers are processes of their own: they train with the stand-ins that
    # tests/cluster_fakes puts in every new process, each training taking a second.
    arms = {"ce-lam1": "slow", "lovasz-lam0.6": "slow", "focal-lam0.6": "raise"}
    attempts = fake_jobs(monkeypatch, tmp_path, arms)
    root = tmp_path / "runs"
    grid = tiny_grid(tiny_model, losses=["ce", "lovasz", "focal"], base=True)
    seen: list[tuple[int, int, str]] = []
    result = run_grid(
        grid, root, progress=False, workers=2,
        on_cell=lambda position, total, outcome: seen.append((position, total, outcome.status)),
    )  # fmt: skip
    assert [position for position, _, _ in seen] == list(range(1, 8))
    assert {total for _, total, _ in seen} == {7}
    statuses = {str(o.cell.relative_dir).split("/", 2)[2]: o.status for o in result.outcomes}
    assert statuses == {
        "base": "finished",
        **{
            f"{arm}/seed{seed}": "finished"
            for arm in ("ce-lam1", "lovasz-lam0.6")
            for seed in (0, 1)
        },
        **{f"focal-lam0.6/seed{seed}": "failed" for seed in (0, 1)},
    }
    failed = next(o for o in result.outcomes if o.status == "failed")
    assert failed.error == "RuntimeError: training of focal-lam0.6 diverged"
    rows = summarize(root)
    assert [row["status"] for row in rows] == [row["status"] for row in result.rows]
    assert sorted(row["status"] for row in rows) == ["failed"] * 2 + ["finished"] * 5
    # Every cell trained once, by one of two worker processes (not this one), each process
    # with half of the cores.
    trained = [
        line.split() for path in attempts.iterdir() for line in path.read_text().splitlines()
    ]
    assert len(trained) == 6 and len(list(attempts.iterdir())) == 6
    workers = {int(pid) for pid, _ in trained}
    assert len(workers) == 2 and os.getpid() not in workers
    cores = len(os.sched_getaffinity(0))
    assert {int(threads) for _, threads in trained} == {max(1, cores // 2)}
    # A rerun runs the failed cells only.
    again = run_grid(grid, root, progress=False, workers=2)
    assert sorted(o.status for o in again.outcomes) == ["failed"] * 2 + ["skipped"] * 5


def test_a_worker_that_dies_fails_its_cell_and_the_grid_goes_on(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_jobs(monkeypatch, tmp_path, {"lovasz-lam0.6": "die"})
    root = tmp_path / "runs"
    grid = tiny_grid(tiny_model, seeds=[0])
    result = run_grid(grid, root, progress=False, workers=2)
    died = next(o for o in result.outcomes if o.cell.loss == "lovasz")
    assert died.status == "failed" and "worker process died" in (died.error or "")
    assert "worker process died" in (root / died.cell.relative_dir / "error.txt").read_text()
    (tmp_path / "ok").mkdir()
    fake_jobs(monkeypatch, tmp_path / "ok", {})
    again = run_grid(grid, root, progress=False, workers=2)
    assert {row["status"] for row in again.rows} == {"finished"}


def test_worker_processes_keep_the_console_their_parent_chose() -> None:
    """A spawned worker starts with Python's default warnings and log levels; without its
    parent's, the libraries' warnings reached the console of a quiet `seglm demo`."""
    import logging
    import multiprocessing
    import re
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    from seglm.experiments.runner import console_settings, start_worker

    library = logging.getLogger("seglm-test-library")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(?!seglm\b)")
        library.setLevel(logging.ERROR)
        try:
            settings = console_settings()
        finally:
            library.setLevel(logging.NOTSET)
    with ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=start_worker,
        initargs=(1, *settings),
    ) as pool:
        filters, levels = pool.submit(console_settings).result()
    assert filters == settings[0]
    assert ("ignore", None, Warning, re.compile(r"(?!seglm\b)"), 0) in filters
    assert levels["seglm-test-library"] == logging.ERROR
