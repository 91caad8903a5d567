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
    CellPlan,
    Grid,
    GridError,
    GridRun,
    check_grid,
    grid_cells,
    plan_cells,
    prepare_root,
    record_failure,
    run_cell,
    unfinished,
    write_summary,
)
from seglm.schema import (
    ConfigError,
    Count,
    Mapping,
    NonNegativeInteger,
    Positive,
    Text,
    check_fields,
    choice,
    optional,
)

LAUNCHERS = ("none", "submitit")
CLUSTERS = ("auto", "slurm", "local", "debug")
SUBMITIT_FOLDER = "submitit"


@dataclass(frozen=True)
class SlurmSettings:
    """How ``--launcher submitit`` runs a grid: one job per cell, with these resources.

    ``extra`` holds any other submitit Slurm parameter by its name without the ``slurm_``
    prefix (``account``, ``qos``, ``constraint``, ``exclude``, ``setup``: shell lines run before
    the job, ``additional_parameters``: a mapping of other sbatch options); submitit refuses
    names it does not know."""

    cluster: choice(CLUSTERS) = "auto"  # auto: Slurm where sbatch is on the PATH, else here
    partition: optional(Text) = None
    # GPUs of one cell (default: 1 on Slurm, locally 1 if any)
    gpus_per_task: optional(NonNegativeInteger) = None
    processes: optional(Count) = None  # processes of one cell (default: one per GPU, at least one)
    cpus_per_process: optional(Count) = None
    mem_gb: optional(Positive) = None  # memory of one cell's job
    timeout_min: Count = 240  # the job's time limit; requeued near it
    array_parallelism: optional(Count) = None  # cells running at once (default: Slurm's 256)
    retries: NonNegativeInteger = 1  # submissions again of a cell whose job died
    max_requeues: NonNegativeInteger = 3  # requeues at the time limit (preemptions do not count)
    folder: optional(Text) = None  # submitit's logs and pickles (default: RUNS/submitit)
    poll_s: optional(Positive) = None  # how often to look at the jobs (default: 30 s, 1 s here)
    extra: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            check_fields(self, noun="key")
        except ConfigError as error:
            raise GridError(f"slurm: {error}") from None

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> SlurmSettings:
        """Settings from the grid file's ``slurm:`` mapping; a key that is not a field is a
        submitit Slurm parameter (``extra``)."""
        known = {key.replace("-", "_"): value for key, value in values.items()}
        names = {item.name for item in dataclasses.fields(cls)} - {"extra"}
        extra = {key: known.pop(key) for key in list(known) if key not in names}
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
    from seglm.schema import read_items

    try:
        merged = {**(values or {}), **read_items(list(items), "--slurm")}
    except ConfigError as error:
        raise GridError(str(error)) from None
    return SlurmSettings.from_mapping(merged)


class CellJob:
    """What one submitit job runs: one cell, resumed where it stopped when requeued.

    Under several processes, each sets up ``torch.distributed`` from submitit's job environment
    and the Trainer trains with DDP; every process returns the cell's outcome."""

    def __init__(self, plan: CellPlan) -> None:
        self.plan = plan

    def __call__(self) -> CellOutcome:
        import submitit

        environment = submitit.JobEnvironment()
        if environment.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return run_cell(self.plan, progress=False)

    def checkpoint(self) -> Any:
        """submitit calls this on preemption or near the time limit: requeue the same job. The
        cell's own files are its checkpoint (the Trainer's checkpoints, predictions.jsonl)."""
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(self.plan))


def check_settings(settings: SlurmSettings) -> None:
    """Let submitit check the settings (unknown Slurm parameters, wrong types) before anything
    is written; its folder for that is a temporary one."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        _auto_executor(settings, folder, "seglm-check")


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
    """The executor that runs the cells of the runs folder ``root``: on this machine submitit's
    local executor itself (its ``visible_gpus`` gives each cell its slot of GPUs), else the
    AutoExecutor of the settings' cluster."""
    submitit = _import_submitit()
    folder = str((Path(settings.folder) if settings.folder else root / SUBMITIT_FOLDER) / "%j")
    if settings.cluster != "local":
        return _auto_executor(settings, folder, f"seglm-{root.name}")
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    executor.update_parameters(
        timeout_min=settings.timeout_min,
        nodes=1,
        tasks_per_node=settings.tasks,
        gpus_per_node=settings.gpus,
    )
    return executor


def _auto_executor(settings: SlurmSettings, folder: str, name: str) -> Any:
    submitit = _import_submitit()
    try:
        executor = submitit.AutoExecutor(
            folder=folder,
            cluster=None if settings.cluster == "auto" else settings.cluster,
            slurm_max_num_timeout=settings.max_requeues,
            local_max_num_timeout=settings.max_requeues,
        )
        executor.update_parameters(name=name, **settings.submitit_parameters())
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
    plans = plan_cells(grid, root)
    check_grid(grid, plans)
    grid_file = prepare_root(grid, root)
    cells = grid_cells(grid_file)
    todo = set(unfinished(root, [plan.cell for plan in plans]))
    outcomes = [CellOutcome(plan.cell, "skipped", 0.0) for plan in plans if plan.cell not in todo]
    jobs = Jobs(_executor(settings, root), settings)
    waiting = deque(plan for plan in plans if plan.cell in todo)
    total = len(waiting)
    on_submit(settings.cluster, total)
    if not jobs.slots:  # Slurm: the whole array at once
        jobs.submit_array([waiting.popleft() for _ in range(len(waiting))])
    position = 0
    while waiting or jobs.running:
        while waiting and jobs.free:
            jobs.submit_on_slot(waiting.popleft())
        ended = jobs.ended()
        for job in ended:
            plan, since = jobs.release(job)
            outcome, problem = _outcome(job, settings.cluster)
            if outcome is None and jobs.attempts[plan.cell] <= settings.retries:
                if jobs.slots:
                    waiting.appendleft(plan)
                else:
                    jobs.submit_array([plan])
                continue
            if outcome is None:
                outcome = _record_death(plan, job, problem, jobs.attempts[plan.cell], since)
            outcomes.append(outcome)
            position += 1
            write_summary(root, grid_file, cells)
            on_cell(position, total, outcome)
        if jobs.running and not ended:
            time.sleep(settings.poll_s or (30.0 if settings.cluster == "slurm" else 1.0))
    rows = write_summary(root, grid_file, cells)
    return GridRun(root, outcomes, rows, time.perf_counter() - started)


class Jobs:
    """The cells' jobs: submitted as one array (Slurm), or one at a time on a free slot of this
    machine's GPUs; how often each cell was submitted."""

    def __init__(self, executor: Any, settings: SlurmSettings) -> None:
        self.executor = executor
        self.slots = _gpu_slots(settings, settings.cluster)
        self.free = list(self.slots)
        self.running: dict[Any, tuple[CellPlan, tuple[int, ...] | None, float]] = {}
        self.attempts: dict[Cell, int] = {}

    def submit_array(self, plans: list[CellPlan]) -> None:
        with self.executor.batch():  # one job array on Slurm
            jobs = [self.executor.submit(CellJob(plan)) for plan in plans]
        for plan, job in zip(plans, jobs, strict=True):
            self._started(job, plan, None)

    def submit_on_slot(self, plan: CellPlan) -> None:
        slot = self.free.pop(0)
        if slot:
            self.executor.update_parameters(visible_gpus=slot)  # the local executor's own
        self._started(self.executor.submit(CellJob(plan)), plan, slot)

    def _started(self, job: Any, plan: CellPlan, slot: tuple[int, ...] | None) -> None:
        self.attempts[plan.cell] = self.attempts.get(plan.cell, 0) + 1
        self.running[job] = (plan, slot, time.perf_counter())

    def ended(self) -> list[Any]:
        return [job for job in list(self.running) if job.done()]

    def release(self, job: Any) -> tuple[CellPlan, float]:
        """An ended job's cell and when it was submitted; its slot is free again."""
        plan, slot, since = self.running.pop(job)
        if slot is not None:
            self.free.append(slot)
        return plan, since


def _outcome(job: Any, cluster: str) -> tuple[CellOutcome | None, str]:
    """An ended job's outcome, or None and what is known of how it died. A job on this machine
    writes its result before its process ends, so a missing result means it died; on Slurm
    submitit waits a little for a shared file system to show the result."""
    if cluster == "local" and not job.paths.result_pickle.exists():
        return None, f"job {job.job_id} ended without a result\n{job.stderr() or ''}".strip()
    try:
        return job.results()[0], ""
    except Exception as error:  # the job ended without a result: it died
        return None, str(error)


def _record_death(
    plan: CellPlan, job: Any, problem: str, attempts: int, since: float
) -> CellOutcome:
    """The cell's error.txt: how its last job died, and where its logs are."""
    paths = job.paths
    summary = f"job died {attempts} time(s) (submitit job {job.job_id}, state {job.state})"
    # The summary row shows the last line.
    text = f"{problem}\n\nlogs: {paths.stdout} and {paths.stderr}\n{summary}\n"
    return record_failure(plan.cell, plan.folder, text, since)
