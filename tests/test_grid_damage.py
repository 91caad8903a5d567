"""Grids whose cells are damaged, shared by two processes, or hold files of the user's: a cell
is finished only when its files are whole and agree, a rerun repairs a damaged one, two
``seglm compare`` on one folder never run a cell twice, ``seglm report`` reports the cells that
are whole, and no file of the user's is lost. Training and evaluation are the stand-ins of
grid_fakes, except in one test that repairs a real cell."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from grid_fakes import FakeRuns
from train._helpers import one_torch_thread
from typer.testing import CliRunner

from seglm.cli import app
from seglm.experiments import EvalConfig, Grid, GridError, run_grid, summarize
from seglm.folders import LOCK_FILE
from seglm.report import build_report

WORKER = Path(__file__).parent / "compare_race_worker.py"
runner = CliRunner(env={"COLUMNS": "240"})


def grid(model: Path, **changes: Any) -> Grid:
    values: dict[str, Any] = {
        "tasks": ["arith"],
        "models": [str(model)],
        "losses": ["ce", "lovasz"],
        "seeds": [0, 1],
        "eval": EvalConfig(limit=6),
        **changes,
    }
    return Grid(**values)


def files_of(folder: Path) -> dict[str, bytes]:
    """The cell's files but the lock, which names the process that last held it."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != LOCK_FILE}


def tear_last_line(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 8])


def drop_metrics_of_line(path: Path, index: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[index])
    del record["metrics"]
    lines[index] = json.dumps(record) + "\n"
    path.write_text("".join(lines))


DAMAGE: dict[str, tuple[str, Callable[[Path], None], bool]] = {
    # name: (the file damaged, how, whether the cell is trained again)
    "metrics cut": ("metrics.json", lambda f: f.write_text('{"n": 6, "metr'), False),
    "metrics without n": ("metrics.json", lambda f: f.write_text('{"metrics": {}}'), False),
    "prediction torn": ("predictions.jsonl", tear_last_line, False),
    "prediction lost": (
        "predictions.jsonl",
        lambda f: f.write_text("".join(f.read_text().splitlines(keepends=True)[:-1])),
        False,
    ),
    "prediction without metrics": (
        "predictions.jsonl",
        lambda f: drop_metrics_of_line(f, 2),
        False,
    ),
    "predictions deleted": ("predictions.jsonl", lambda f: f.unlink(), False),
    "eval settings cut": ("eval_config.json", lambda f: f.write_text("{"), False),
    "train report deleted": ("train_report.json", lambda f: f.unlink(), True),
    "train report cut": ("train_report.json", lambda f: f.write_text('{"global_st'), True),
    "log torn": ("log.jsonl", tear_last_line, True),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cell_is_repaired_and_equals_an_undamaged_one(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    run_grid(grid(tiny_model), root, progress=False)
    cell = root / "arith" / tiny_model.name / "lovasz-lam0.6" / "seed1"
    whole = files_of(cell)
    name, damage_file, trained_again = DAMAGE[damage]
    damage_file(cell / name)
    row = next(r for r in summarize(root) if r["dir"].endswith("lovasz-lam0.6/seed1"))
    assert row["status"] == "damaged" and row["error"].startswith(f"{name}: ")

    rerun = run_grid(grid(tiny_model), root, progress=False)
    statuses = [(str(o.cell.relative_dir).split("/", 2)[2], o.status) for o in rerun.outcomes]
    assert statuses == [
        ("ce-lam1/seed0", "skipped"),
        ("lovasz-lam0.6/seed0", "skipped"),
        ("ce-lam1/seed1", "skipped"),
        ("lovasz-lam0.6/seed1", "finished"),
    ]
    repaired = rerun.outcomes[3].repaired
    assert repaired is not None and repaired.startswith(f"{name}: ")
    assert files_of(cell) == whole
    assert len(fakes.trained) == 4 + trained_again and len(fakes.evaluated) == 5
    assert {r["status"] for r in summarize(root)} == {"finished"}


def test_a_torn_prediction_of_a_real_cell_is_made_again_not_kept(
    tiny_model: Path, tmp_path: Path
) -> None:
    # The real evaluation resumes from the predictions that read whole and makes the torn one
    # again; the rest stays as it was, and metrics.json is computed again from them.
    root = tmp_path / "runs"
    tiny = grid(
        tiny_model,
        losses=["ce"],
        seeds=[0],
        train={"task_options": {"train_size": 8, "test_size": 4}, "max_steps": 1,
               "max_length": 96, "eval_split": "none", "batch_size": 4},
        eval=EvalConfig(limit=4, max_new_tokens=3),
    )  # fmt: skip
    with one_torch_thread():
        run_grid(tiny, root, progress=False)
        cell = root / "arith" / tiny_model.name / "ce-lam1" / "seed0"
        predictions = (cell / "predictions.jsonl").read_text()
        metrics = json.loads((cell / "metrics.json").read_text())
        tear_last_line(cell / "predictions.jsonl")
        (cell / "metrics.json").write_text("{")
        rerun = run_grid(tiny, root, progress=False)
    assert rerun.outcomes[0].status == "finished"
    assert "predictions.jsonl: line 4 is cut short" in (rerun.outcomes[0].repaired or "")
    assert (cell / "predictions.jsonl").read_text() == predictions
    again = json.loads((cell / "metrics.json").read_text())
    assert again["metrics"] == metrics["metrics"] and again["n"] == 4
    assert again["throughput"]["examples"] == 1  # only the torn one was generated again


def test_report_on_a_grid_with_one_damaged_cell_reports_the_others(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    run_grid(grid(tiny_model), root, progress=False)
    damaged = root / "arith" / tiny_model.name / "lovasz-lam0.6" / "seed0"
    tear_last_line(damaged / "predictions.jsonl")
    result = runner.invoke(app, ["report", str(root), "--resamples", "200"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    assert "Traceback" not in text
    assert (
        f"damaged, left out: arith/{tiny_model.name}/lovasz-lam0.6/seed0: predictions.jsonl: "
        "line 6 is cut short (no newline)"
    ) in text
    assert "1 damaged cell(s) left out of the report" in text
    report = (root / "report.md").read_text()
    assert "3 finished, 0 failed, 0 pending, 1 damaged (left out)." in report
    assert f"- damaged: `arith/{tiny_model.name}/lovasz-lam0.6/seed0`: predictions.jsonl" in report
    # The others are reported: lovasz has its one whole seed, CE both.
    arms = json.loads((root / "report.json").read_text())["groups"][0]["arms"]
    seeds = {arm["arm"]: arm["seeds"] for arm in arms}
    assert seeds["lovasz-lam0.6"] == 1 and seeds["ce-lam1"] == 2


def test_two_compares_on_one_folder_run_each_cell_once(tiny_model: Path, tmp_path: Path) -> None:
    runs, go, trained = tmp_path / "runs", tmp_path / "go", tmp_path / "trained.log"
    command = [sys.executable, str(WORKER), str(go), str(trained), str(tiny_model), str(runs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    go.write_text("")
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    cells = [line for line in trained.read_text().splitlines()]
    assert len(cells) == 6 and len(set(cells)) == 6  # each of the 6 cells trained once
    rows = summarize(runs)
    assert [row["status"] for row in rows] == ["finished"] * 6
    assert not list(runs.rglob("error.txt"))
    # Every cell was run by one process; the other left it (busy) or found it finished.
    text = outputs[0][1] + outputs[1][1]
    ran = re.findall(r"\] (\S+): finished", text)
    assert sorted(ran) == sorted({row["dir"] for row in rows})


def test_files_of_the_users_survive_compare_repair_and_report(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    run_grid(grid(tiny_model, seeds=[0]), root, progress=False)
    cell = root / "arith" / tiny_model.name / "lovasz-lam0.6" / "seed0"
    planted = {
        root / "notes.txt": b"my notes\n",
        root / "figures" / "mine.png": b"\x89PNG mine",
        root / "arith" / "README": b"about arith\n",
        cell / "analysis.csv": b"a,b\n",
        cell / "checkpoint-notes" / "x.txt": b"x",
    }
    for path, data in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (cell / "metrics.json").write_text("{")  # a repair removes seglm's files only
    run_grid(grid(tiny_model, seeds=[0, 1]), root, progress=False)  # repairs, and extends
    (root / "report.md").write_text("my draft")  # where seglm would write its report
    with pytest.raises(GridError, match=r"report\.md exists and seglm did not write it"):
        build_report(root, resamples=100)
    assert (root / "report.md").read_text() == "my draft"
    (root / "report.md").unlink()
    build_report(root, resamples=100)
    build_report(root, resamples=100)  # its own report replaced
    for path, data in planted.items():
        assert path.read_bytes() == data, path
    assert len(fakes.trained) == 4
    # A folder of the user's: refused, nothing written there.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "draft.md").write_text("my draft")
    with pytest.raises(GridError, match=r"mine is not empty and seglm did not make it"):
        build_report(root, mine, resamples=100)
    assert [p.name for p in mine.iterdir()] == ["draft.md"]
