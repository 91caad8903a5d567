"""``seglm compare --launcher submitit``: one submitit job per cell, through submitit's local
executor (the path a Slurm array takes, on this machine): a cell that raises is recorded, one
whose job dies is submitted again and recorded when it dies again, a preempted one is requeued
and resumes, and the summary is complete when every job has ended.

The job processes train with the stand-ins of tests/grid_fakes.py, put in place by
tests/cluster_fakes/sitecustomize.py; one test trains a real tiny model with DDP in its job.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from grid_fakes import fake_jobs
from typer.testing import CliRunner

from seglm.cli import app
from seglm.cluster import SlurmSettings, parse_settings
from seglm.experiments import GridError, summarize

runner = CliRunner(env={"COLUMNS": "240"})


def plain(output: str) -> str:
    return re.sub(r"\s+", " ", output)


def test_a_grid_through_the_local_executor_records_failures_and_completes_the_summary(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = fake_jobs(
        monkeypatch,
        tmp_path,
        {
            "lovasz-lam0.6": "raise",
            "focal-lam0.6": "die_once",
            "sadl-lam0.6": "preempt_once",
            "gdice-lam0.6": "die",
        },
    )
    out = tmp_path / "runs"
    flags = ["--model", str(tiny_model), "--losses", "ce,lovasz,focal,sadl,gdice", "--seeds", "0,"]
    flags += ["--train", "max_steps=2", "--eval-limit", "4", "--out", str(out)]
    flags += ["--launcher", "submitit", "--slurm", "cluster=local"]
    flags += ["--slurm", "array_parallelism=3", "--slurm", "poll_s=0.2", "--slurm", "retries=1"]
    result = runner.invoke(app, ["compare", *flags])
    assert result.exit_code == 1, result.output  # some cells failed
    text = plain(result.output)
    assert "submitting 5 cell(s) to submitit (local)" in text
    assert "3 cells run, 0 already finished, 2 failed" in text

    rows = {row["arm"]: row for row in summarize(out)}
    status = {arm: row["status"] for arm, row in rows.items()}
    assert status == {
        "ce-lam1": "finished",
        "lovasz-lam0.6": "failed",  # raised: recorded at once
        "focal-lam0.6": "finished",  # died once, submitted again
        "sadl-lam0.6": "finished",  # preempted, requeued, resumed
        "gdice-lam0.6": "failed",  # died at every attempt
    }
    assert "diverged" in rows["lovasz-lam0.6"]["error"]
    assert rows["gdice-lam0.6"]["error"].startswith("job died 2 time(s)")
    error = (out / rows["gdice-lam0.6"]["dir"] / "error.txt").read_text()
    assert "logs: " in error and "submitit" in error

    def tries(arm: str) -> int:
        return len((attempts / f"{arm}-seed0").read_text().splitlines())

    assert [tries(a) for a in ("ce-lam1", "lovasz-lam0.6", "focal-lam0.6", "gdice-lam0.6")] == [
        1,
        1,
        2,
        2,
    ]
    # The preempted job was requeued: a second attempt in the same job, from its checkpoint.
    assert tries("sadl-lam0.6") == 2
    logs = "".join(p.read_text() for p in (out / "submitit").rglob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    summary = json.loads((out / "summary.json").read_text())
    assert {row["status"] for row in summary["cells"]} == {"finished", "failed"}

    # A rerun submits only the failed cells (and the dead one may now live).
    monkeypatch.setenv("SEGLM_FAKE_PLAN", str(tmp_path / "plan-ok.json"))
    (tmp_path / "plan-ok.json").write_text(json.dumps({"state": str(attempts), "arms": {}}))
    again = runner.invoke(app, ["compare", *flags])
    assert again.exit_code == 0, again.output
    assert "submitting 2 cell(s)" in plain(again.output)
    assert {row["status"] for row in summarize(out)} == {"finished"}
    # The report reads the runs folder as usual (the submitit folder beside the cells).
    report = runner.invoke(app, ["report", str(out), "--resamples", "100"])
    assert report.exit_code == 0, report.output


def test_settings_from_the_grid_file_and_flags(tiny_model: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"task: arith\nmodel: {tiny_model}\nlosses: [ce]\nlauncher: submitit\n"
        "slurm:\n  partition: gpu\n  gpus_per_task: 2\n  timeout_min: 90\n  account: lab\n"
    )
    result = runner.invoke(
        app, ["compare", str(grid), "--slurm", "timeout_min=30", "--dry-run", "--out", "x"]
    )
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "submitit: cluster=auto, partition=gpu, gpus_per_task=2, timeout_min=30" in text
    assert "account=lab" in text
    settings = parse_settings({"gpus_per_task": 2, "account": "lab"}, ["mem-gb=64"])
    assert settings.tasks == 2 and settings.mem_gb == 64
    assert settings.submitit_parameters() == {
        "timeout_min": 240,
        "nodes": 1,
        "tasks_per_node": 2,
        "gpus_per_node": 2,
        "mem_gb": 64,
        "slurm_account": "lab",
        "slurm_additional_parameters": {"requeue": True},
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--launcher", "slurm"], "launcher must be one of none, submitit"),
        (["--slurm", "partition=gpu"], "--slurm settings need --launcher submitit"),
        (["--launcher", "submitit", "--shard", "0/2"], "--shard and --launcher submitit"),
        (
            ["--launcher", "submitit", "--slurm", "gpus_per_task=-1"],
            "slurm: key 'gpus_per_task' must be >= 0, got -1",
        ),
        (
            ["--launcher", "submitit", "--slurm", "cluster=pbs"],
            "cluster='pbs' is not one of 'auto', 'slurm', 'local', 'debug'",
        ),
        (
            ["--launcher", "submitit", "--slurm", "mem_gb=lots"],
            "slurm: key 'mem_gb' expects a number, got 'lots'",
        ),
        (["--launcher", "submitit", "--slurm", "retries=true"], "key 'retries' expects an integer"),
        (["--launcher", "submitit", "--workers", "2"], "--workers and --launcher submitit exclude"),
        (["--launcher", "submitit", "--slurm", "partition"], "--slurm expects key=value"),
    ],
)
def test_bad_launch_settings_are_refused(tiny_model: Path, args: list[str], message: str) -> None:
    result = runner.invoke(
        app, ["compare", "--model", str(tiny_model), "--losses", "ce", "--dry-run", *args]
    )
    assert result.exit_code == 1 and message in plain(result.output), result.output


def test_an_unknown_slurm_parameter_is_refused_before_anything_runs(
    tiny_model: Path, tmp_path: Path
) -> None:
    from seglm.cluster import run_grid_submitit
    from seglm.experiments import Grid

    grid = Grid(tasks=["arith"], models=[str(tiny_model)], losses=["ce"])
    settings = SlurmSettings(cluster="local", extra={"acount": "lab"})
    with pytest.raises(GridError, match="Unknown argument 'acount'"):
        run_grid_submitit(grid, tmp_path / "runs", settings)
    assert not (tmp_path / "runs").exists()


def test_a_cell_trains_with_ddp_in_its_job(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real tiny model, two processes in the cell's job (what gpus_per_task=2 gives on a GPU
    # node), through the local executor.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on a busy machine
    out = tmp_path / "runs"
    flags = ["--model", str(tiny_model), "--losses", "ce", "--seeds", "0,"]
    flags += ["--eval-limit", "2", "--max-new-tokens", "3", "--out", str(out)]
    flags += ["--train", "max_steps=2", "--train", "batch_size=2", "--train", "max_length=96"]
    flags += ["--train", "eval_split=none"]
    flags += ["--train", "task_options={train_size: 8, validation_size: 2, test_size: 2}"]
    flags += ["--launcher", "submitit", "--slurm", "cluster=local", "--slurm", "processes=2"]
    flags += ["--slurm", "poll_s=0.2"]
    result = runner.invoke(app, ["compare", *flags])
    assert result.exit_code == 0, result.output
    (row,) = summarize(out)
    assert row["status"] == "finished" and row["n"] == 2
    report = json.loads((out / row["dir"] / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["global_step"] == 2
    assert report["distributed_type"] == "MULTI_CPU"  # DDP over gloo


def test_local_gpu_slots_follow_the_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from seglm.cluster import _gpu_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,6,7")
    settings = SlurmSettings(cluster="local", gpus_per_task=2)
    assert _gpu_slots(settings, "local") == [(2, 3), (5, 6)]
    assert _gpu_slots(SlurmSettings(cluster="local", gpus_per_task=1), "local") == [
        (2,),
        (3,),
        (5,),
        (6,),
        (7,),
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(GridError, match="0 visible GPU"):
        _gpu_slots(settings, "local")
    # Without GPUs: array_parallelism slots; on Slurm no slots (the array is throttled there).
    assert _gpu_slots(SlurmSettings(array_parallelism=3), "local") == [(), (), ()]
    assert _gpu_slots(SlurmSettings(array_parallelism=3), "slurm") == []


def test_the_slurm_array_that_the_settings_give(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No Slurm here: a stand-in sbatch records the batch file that submitit hands it.
    from seglm.cluster import CellJob, _executor
    from seglm.experiments import Grid, plan_cells

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/batch.sh\necho "Submitted batch job 4242"\n')
    sbatch.chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = parse_settings(
        {"cluster": "slurm", "partition": "gpu", "gpus_per_task": 2, "account": "lab"},
        ["cpus_per_process=8", "mem_gb=64", "timeout_min=90", "array_parallelism=2"],
    )
    grid = Grid(tasks=["arith"], models=[str(tiny_model)], losses=["ce", "lovasz", "focal"])
    executor = _executor(settings, tmp_path / "runs")
    with executor.batch():
        jobs = [executor.submit(CellJob(plan)) for plan in plan_cells(grid, tmp_path / "runs")]
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1", "4242_2"]
    batch = (tmp_path / "batch.sh").read_text()
    for line in (
        "#SBATCH --array=0-2%2",  # one task per cell, two at a time
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",  # one process per GPU: DDP in the cell
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=90",
        "#SBATCH --signal=USR2@90",  # submitit's requeue signal before the limit
        "#SBATCH --requeue",
    ):
        assert line in batch, line


def test_the_debug_cluster_runs_the_cells_in_this_process(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grid_fakes import FakeRuns

    from seglm.cluster import run_grid_submitit
    from seglm.experiments import Grid

    fakes = FakeRuns(fail=lambda arm: arm.startswith("lovasz")).install(monkeypatch)
    grid = Grid(tasks=["arith"], models=[str(tiny_model)], losses=["ce", "lovasz"], base=True)
    seen = []
    result = run_grid_submitit(
        grid,
        tmp_path / "runs",
        SlurmSettings(cluster="debug"),
        on_cell=lambda position, total, outcome: seen.append((position, total, outcome.status)),
    )
    assert seen == [(1, 3, "finished"), (2, 3, "finished"), (3, 3, "failed")]
    assert len(fakes.trained) == 2 and result.count("failed") == 1
    assert [row["status"] for row in result.rows] == ["finished", "finished", "failed"]


def test_gpus_of_a_cell_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SlurmSettings(cluster="slurm").resolved().gpus_per_task == 1
    assert SlurmSettings(cluster="debug").resolved().gpus_per_task == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert SlurmSettings(cluster="local").resolved().gpus_per_task == 0  # a CPU machine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert SlurmSettings(cluster="local").resolved().gpus_per_task == 1
    assert SlurmSettings(cluster="local", gpus_per_task=0).resolved().gpus_per_task == 0
    assert SlurmSettings(cluster="slurm", gpus_per_task=4).resolved().tasks == 4
