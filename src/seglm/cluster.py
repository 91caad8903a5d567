"""Grids on a cluster: ``seglm compare --launcher submitit``, one submitit job per cell.

On Slurm the cells go out as one job array (``sbatch --array``, throttled by
``array_parallelism``), each task with the resources of ``SlurmSettings``; the process that
submitted them waits, writes the summary after every cell, and is done when the array is. The
same code runs on one machine with submitit's local executor (``cluster: local``), which starts
each cell as a subprocess on its own slot of GPUs, and in this process with ``cluster: debug``.

- **Preemption and time limits.** Each job runs a :class:`CellJob`, a submitit
  ``Checkpointable``: when Slurm signals a preemption, or the time limit comes near, submitit
  requeues it, and the requeued job resumes the cell (training from its last checkpoint,
  evaluation from the predictions it has written) as a rerun of ``seglm compare`` does.
  ``max_requeues`` bounds the requeues at the time limit; preemptions do not count.
- **A cell that dies** (its job ends without a result: killed for memory, a node failure, a
  segfault, time limit after ``max_requeues``) is submitted again, up to ``retries`` times; then
  its ``error.txt`` records how it died and the job's log files. A cell whose training or
  evaluation raises writes its ``error.txt`` itself, as without a launcher, and is not retried:
  it would fail the same way (a rerun of ``seglm compare`` retries it).
- **Several GPUs per cell**: ``gpus_per_task: N`` gives a cell N processes (``processes``)
  that train with DDP (``torch.distributed`` set up from submitit's job environment), as under
  ``torchrun --nproc_per_node N``.

Nothing here imports submitit until a grid is launched: it is an optional dependency.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglm.experiments import (
    Cell,
    CellOutcome,
    Grid,
    GridError,
    GridRun,
    check_grid,
    prepare_root,
    run_cell,
    write_summary,
)
from seglm.runs import CELL_ERROR_FILE

LAUNCHERS = ("none", "submitit")
CLUSTERS = ("auto", "slurm", "local", "debug")
SUBMITIT_FOLDER = "submitit"
# Keys of SlurmSettings; any other key is a submitit Slurm parameter (slurm_<key>).
SETTING_KEYS = (
    "cluster",
    "partition",
    "gpus_per_task",
    "processes",
    "cpus_per_process",
    "mem_gb",
    "timeout_min",
    "array_parallelism",
    "retries",
    "max_requeues",
    "folder",
    "poll_s",
)


@dataclass(frozen=True)
class SlurmSettings:
    """How ``--launcher submitit`` runs a grid: one job per cell, with these resources.

    ``extra`` holds any other submitit Slurm parameter by its name without the ``slurm_``
    prefix (``account``, ``qos``, ``constraint``, ``exclude``, ``setup``: shell lines run before
    the job, ``additional_parameters``: a mapping of other sbatch options); submitit refuses
    names it does not know."""

    cluster: str = "auto"  # auto: Slurm where sbatch is on the PATH, else this machine
    partition: str | None = None
    gpus_per_task: int | None = None  # GPUs of one cell (default: 1 on Slurm, locally 1 if any)
    processes: int | None = None  # processes of one cell (default: one per GPU, at least one)
    cpus_per_process: int | None = None
    mem_gb: float | None = None  # memory of one cell's job
    timeout_min: int = 240  # the job's time limit; requeued near it
    array_parallelism: int | None = None  # cells running at once (default: Slurm's 256)
    retries: int = 1  # submissions again of a cell whose job died
    max_requeues: int = 3  # requeues at the time limit (preemptions do not count)
    folder: str | None = None  # submitit's logs and pickles (default: RUNS/submitit)
    poll_s: float | None = None  # how often to look at the jobs (default: 30 s, 1 s locally)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise GridError(
                f"slurm: cluster must be one of {', '.join(CLUSTERS)}, got {self.cluster!r}"
            )
        for name, minimum in (
            ("gpus_per_task", 0),
            ("processes", 1),
            ("cpus_per_process", 1),
            ("timeout_min", 1),
            ("array_parallelism", 1),
            ("retries", 0),
            ("max_requeues", 0),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise GridError(f"slurm: {name} must be an integer >= {minimum}, got {value!r}")
        for name in ("mem_gb", "poll_s"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise GridError(f"slurm: {name} must be a number > 0, got {value!r}")
        for name in ("partition", "folder"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise GridError(f"slurm: {name} must be text, got {value!r}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> SlurmSettings:
        known = {key.replace("-", "_"): value for key, value in values.items()}
        extra = {key: known.pop(key) for key in list(known) if key not in SETTING_KEYS}
        return cls(**known, extra=extra)

    @property
    def gpus(self) -> int:
        return self.gpus_per_task or 0

    @property
    def tasks(self) -> int:
        """Processes of one cell."""
        return self.processes or max(1, self.gpus)

    def resolved(self) -> SlurmSettings:
        """The cluster that ``auto`` finds, and the GPUs of a cell when not given: one on
        Slurm, one on this machine when it has a GPU (the local executor hides the others from
        each cell), none in this process (debug)."""
        cluster = self.cluster
        if cluster == "auto":
            import submitit

            cluster = submitit.AutoExecutor.which()
        gpus = self.gpus_per_task
        if gpus is None:
            gpus = {"slurm": 1, "local": min(1, len(_visible_gpus()))}.get(cluster, 0)
        return dataclasses.replace(self, cluster=cluster, gpus_per_task=gpus)

    def submitit_parameters(self) -> dict[str, Any]:
        """``AutoExecutor.update_parameters`` arguments (every cluster's)."""
        parameters: dict[str, Any] = {
            "timeout_min": self.timeout_min,
            "nodes": 1,
            "tasks_per_node": self.tasks,
            "gpus_per_node": self.gpus,
            "cpus_per_task": self.cpus_per_process,
            "mem_gb": self.mem_gb,
            "slurm_partition": self.partition,
            "slurm_array_parallelism": self.array_parallelism,
            **{f"slurm_{key}": value for key, value in self.extra.items()},
        }
        # --requeue: Slurm may requeue the job itself (node failure), and submitit's
        # `scontrol requeue` works where the cluster's JobRequeue default is off.
        additional = parameters.get("slurm_additional_parameters") or {}
        if not isinstance(additional, dict):
            raise GridError(f"slurm: additional_parameters must be a mapping, got {additional!r}")
        parameters["slurm_additional_parameters"] = {"requeue": True, **additional}
        return {key: value for key, value in parameters.items() if value is not None}

    def describe(self) -> str:
        shown = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        shown.update(self.extra)
        return ", ".join(f"{key}={value}" for key, value in shown.items() if value is not None)


def parse_settings(values: dict[str, Any] | None, items: list[str]) -> SlurmSettings:
    """The grid file's ``slurm:`` mapping, then ``--slurm KEY=VALUE`` items (values read as
    YAML)."""
    from seglm.schema import ConfigError, read_items

    try:
        merged = {**(values or {}), **read_items(list(items), "--slurm")}
    except ConfigError as error:
        raise GridError(str(error)) from None
    try:
        return SlurmSettings.from_mapping(merged)
    except TypeError as error:  # a value of the wrong kind for a dataclass field
        raise GridError(f"slurm: {error}") from None


class CellJob:
    """What one submitit job runs: one cell, resumed where it stopped when requeued.

    Under several processes, each sets up ``torch.distributed`` from submitit's job environment
    and the Trainer trains with DDP; every process returns the cell's outcome."""

    def __init__(self, grid: Grid, cell: Cell, root: Path) -> None:
        self.grid, self.cell, self.root = grid, cell, root

    def __call__(self) -> CellOutcome:
        import submitit

        environment = submitit.JobEnvironment()
        if environment.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return run_cell(self.grid, self.cell, self.root, progress=False)

    def checkpoint(self) -> Any:
        """submitit calls this on preemption or near the time limit: requeue the same job. The
        cell's own files are its checkpoint (the Trainer's checkpoints, predictions.jsonl)."""
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(self.grid, self.cell, self.root))


def check_settings(settings: SlurmSettings) -> None:
    """Let submitit check the settings (unknown Slurm parameters, wrong types) before anything
    is written; its folder for that is a temporary one."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        _executor(dataclasses.replace(settings, folder=folder), Path(folder))


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise GridError(
            "--launcher submitit needs the submitit package: pip install submitit "
            "(or pip install 'seglm[cluster]')"
        ) from None
    return submitit


def _executor(settings: SlurmSettings, root: Path) -> Any:
    submitit = _import_submitit()
    folder = Path(settings.folder) if settings.folder else root / SUBMITIT_FOLDER
    cluster = None if settings.cluster == "auto" else settings.cluster
    try:
        executor = submitit.AutoExecutor(
            folder=str(folder / "%j"),
            cluster=cluster,
            slurm_max_num_timeout=settings.max_requeues,
            local_max_num_timeout=settings.max_requeues,
        )
        executor.update_parameters(name=f"seglm-{root.name}", **settings.submitit_parameters())
    except (NameError, ValueError, AssertionError, RuntimeError) as error:
        raise GridError(f"slurm: submitit refused the settings: {error}") from None
    return executor


def _gpu_slots(settings: SlurmSettings, cluster: str) -> list[tuple[int, ...]]:
    """On this machine (local executor): disjoint groups of ``gpus_per_task`` visible GPUs, one
    per cell running at once; without GPUs, ``array_parallelism`` slots (default 1); on Slurm
    none."""
    if cluster == "slurm":
        return []  # the whole array at once: Slurm throttles it (array_parallelism)
    if cluster != "local" or settings.gpus == 0:
        return [()] * (settings.array_parallelism or 1)
    visible = _visible_gpus()
    size = settings.gpus
    slots = [tuple(visible[i : i + size]) for i in range(0, len(visible) - size + 1, size)]
    if not slots:
        raise GridError(
            f"slurm: gpus_per_task={size} but this machine has {len(visible)} visible GPU(s)"
        )
    return slots[: settings.array_parallelism] if settings.array_parallelism else slots


def _visible_gpus() -> list[int]:
    """The GPUs this process may use, as indices a child's CUDA_VISIBLE_DEVICES names: the
    parent's own CUDA_VISIBLE_DEVICES when it is set (a slot is a subset of it)."""
    import torch

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(range(torch.cuda.device_count()))
    items = [item.strip() for item in listed.split(",") if item.strip()]
    if not all(item.isdigit() for item in items):
        raise GridError(
            f"slurm: cluster=local hands out GPUs by index, but CUDA_VISIBLE_DEVICES is "
            f"{listed!r}; list indices instead"
        )
    return [int(item) for item in items]


def run_grid_submitit(
    grid: Grid,
    root: str | os.PathLike[str],
    settings: SlurmSettings,
    *,
    on_cell: Callable[[int, int, CellOutcome], None] = lambda position, total, outcome: None,
    on_submit: Callable[[str, int], None] = lambda cluster, count: None,
) -> GridRun:
    """Check the grid, submit one job per unfinished cell, wait for every one (submitting a
    dead cell's job again up to ``settings.retries`` times), and write the summary after each.
    Raises :class:`GridError` before anything is submitted."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GridError(
            "--launcher submitit starts the processes of each cell itself; run seglm compare "
            "in one process (not under torchrun or accelerate launch)"
        )
    root = Path(root)
    started = time.perf_counter()
    _import_submitit()
    settings = settings.resolved()
    check_settings(settings)
    check_grid(grid, root)
    prepare_root(grid, root)
    executor = _executor(settings, root)
    cluster = executor.cluster
    cells = grid.cells()
    outcomes: list[CellOutcome] = []
    waiting: deque[Cell] = deque()
    for cell in cells:
        if (root / cell.relative_dir / "metrics.json").is_file():
            outcomes.append(CellOutcome(cell, "skipped", 0.0))
        else:
            waiting.append(cell)
    total = len(waiting)
    on_submit(cluster, total)
    slots = _gpu_slots(settings, cluster)
    free = list(slots)
    running: dict[Any, tuple[Cell, tuple[int, ...] | None, float]] = {}
    attempts: dict[Cell, int] = {}
    poll_s = settings.poll_s or (30.0 if cluster == "slurm" else 1.0)

    def submit(batch: list[Cell]) -> None:
        if not batch:
            return
        jobs = []
        with executor.batch():  # one job array on Slurm
            for cell in batch:
                jobs.append(executor.submit(CellJob(grid, cell, root)))
        for cell, job in zip(batch, jobs, strict=True):
            attempts[cell] = attempts.get(cell, 0) + 1
            running[job] = (cell, None, time.perf_counter())

    def submit_on(cell: Cell, slot: tuple[int, ...]) -> None:
        if cluster == "local" and slot:
            # The local executor's own parameter; AutoExecutor does not pass it through.
            executor._executor.update_parameters(visible_gpus=slot)
        attempts[cell] = attempts.get(cell, 0) + 1
        running[executor.submit(CellJob(grid, cell, root))] = (cell, slot, time.perf_counter())

    if not slots:  # Slurm: the whole array at once
        submit([waiting.popleft() for _ in range(len(waiting))])
    position = 0
    while waiting or running:
        while waiting and free:
            submit_on(waiting.popleft(), free.pop(0))
        finished = [job for job in list(running) if job.done()]
        if cluster != "slurm":
            # A job on this machine writes its result before it ends: do not wait the 15 s that
            # submitit gives a shared file system to show a dead job's missing result.
            for job in finished:
                job._results_timeout_s = 0
        for job in finished:
            cell, slot, since = running.pop(job)
            if slot is not None:
                free.append(slot)
            try:
                outcome = job.results()[0]
            except Exception as error:  # the job ended without a result: it died
                if attempts[cell] <= settings.retries:
                    if slots:
                        waiting.appendleft(cell)
                    else:
                        submit([cell])
                    continue
                outcome = _record_death(root, cell, job, error, attempts[cell], since)
            outcomes.append(outcome)
            position += 1
            write_summary(root)
            on_cell(position, total, outcome)
        if running and not finished:
            time.sleep(poll_s)
    rows = write_summary(root)
    return GridRun(root, outcomes, rows, time.perf_counter() - started)


def _record_death(
    root: Path, cell: Cell, job: Any, error: BaseException, attempts: int, since: float
) -> CellOutcome:
    """The cell's error.txt: how its last job died, and where its logs are."""
    folder = root / cell.relative_dir
    folder.mkdir(parents=True, exist_ok=True)
    paths = job.paths
    summary = f"job died {attempts} time(s) (submitit job {job.job_id}, state {job.state})"
    # The summary row shows the last line.
    text = f"{error}\n\nlogs: {paths.stdout} and {paths.stderr}\n{summary}\n"
    (folder / CELL_ERROR_FILE).write_text(text)
    return CellOutcome(cell, "failed", time.perf_counter() - since, summary)
