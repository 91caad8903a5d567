"""Several processes (``torchrun``, ``accelerate launch``): which one this is, and doing a step
together so that one rank's failure fails every rank instead of leaving them waiting.

Evaluation shares the examples across ranks (each generates or scores its share, rank 0 gathers
and scores). The launchers set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a process group that
training has not started is started here (gloo on CPU, NCCL on CUDA) with a long timeout,
because ranks wait for each other while rank 0 writes the results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self) -> str | None:
        """This rank's GPU under a multi-process launch; None (the default device) otherwise."""
        import torch

        if self.distributed and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return None


def current_ranks() -> Ranks:
    """This process's place in the launch (one process when no launcher set the variables)."""
    return Ranks(
        rank=int(os.environ.get("RANK", "0")),
        world=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


# What torchrun and accelerate launch set in every process they start.
LAUNCHER_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK")


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def unlaunched_gpus_problem(device_count: int, environ: Mapping[str, str]) -> str | None:
    """Why training cannot start in this process, or None: several visible GPUs and no
    launcher. The transformers Trainer would then wrap the model in ``torch.nn.DataParallel``,
    whose replicas each get a slice of the batch while the fused head holds the whole batch's
    labels (and seglm's token means assume one process per device)."""
    if device_count <= 1 or any(name in environ for name in LAUNCHER_VARIABLES):
        return None
    return (
        f"{device_count} GPUs are visible and no launcher started this process: the trainer "
        "would split each batch across them with torch.nn.DataParallel, which seglm does not "
        "support. One GPU: CUDA_VISIBLE_DEVICES=0 seglm train ...; all of them, one process "
        "each: accelerate launch --config_file configs/accelerate/ddp.yaml -m seglm train ... "
        f"or torchrun --nproc_per_node {device_count} -m seglm train ..."
    )


def ensure_process_group(ranks: Ranks) -> None:
    import torch
    import torch.distributed as dist

    if not ranks.distributed or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)


def gather(ranks: Ranks, value: T) -> list[T]:
    """Every rank's ``value``, in rank order (``[value]`` with one process)."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    ensure_process_group(ranks)
    values: list[T | None] = [None] * ranks.world
    dist.all_gather_object(values, value)
    return values  # type: ignore[return-value]


class RankFailed(RuntimeError):
    """Another rank failed the step this rank was doing with it."""


def together(ranks: Ranks, step: Callable[[], T]) -> T:
    """Run ``step`` on this rank, then learn whether every rank succeeded: this rank's own error
    is raised again, and a rank that succeeded raises :class:`RankFailed` naming the one that
    did not. With one process it is just ``step()``."""
    if not ranks.distributed:
        return step()
    result: T | None = None
    error: BaseException | None = None
    try:
        result = step()
    except Exception as caught:  # every rank must reach the gather below
        error = caught
    outcomes = gather(ranks, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, text) for rank, text in enumerate(outcomes) if text is not None]
    if failed:
        rank, text = failed[0]
        raise RankFailed(f"rank {rank} failed: {text}")
    return result  # type: ignore[return-value]
