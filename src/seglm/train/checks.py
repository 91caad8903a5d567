"""What training checks before it loads the model: the objective, the machine, the task and
model names, the tokenizer, where the final weights are chosen."""

from __future__ import annotations

import os
from typing import Any

from seglm.config import ConfigError, TrainConfig, missing_reporters


def build_objective(config: TrainConfig) -> Any:
    """The config's :class:`~seglm.losses.Objective`: its loss spec, and each of the objective's
    options from the config field of the same name."""
    from seglm.losses import OBJECTIVE_OPTIONS, Objective

    options = {name: getattr(config, name) for name in OBJECTIVE_OPTIONS}
    try:
        return Objective.from_spec(config.loss, **options)
    except ValueError as error:
        raise ConfigError(f"objective: {error}") from None


def check_environment(config: TrainConfig) -> None:
    """Fail early on what this machine cannot do."""
    import torch

    from seglm.adapters import check_adapter_available

    check_adapter_available(config.adapter)
    if config.dtype == "fp16" and not torch.cuda.is_available():
        raise ConfigError(
            "dtype 'fp16' (autocast with loss scaling) needs a CUDA GPU; on CPU use "
            "--dtype bf16 or --dtype fp32"
        )
    missing = missing_reporters(config)
    if missing:
        raise ConfigError(
            f"report_to {', '.join(missing)}: install the package(s) first "
            f"(pip install {' '.join(missing)})"
        )
    from seglm.distributed import unlaunched_gpus_problem, visible_gpu_count

    problem = distributed_problem() or unlaunched_gpus_problem(visible_gpu_count(), os.environ)
    if problem:
        raise ConfigError(problem)


# accelerate launch sets these from an accelerate config's distributed_type.
SHARDING_LAUNCHES: dict[str, str] = {
    "FSDP": "ACCELERATE_USE_FSDP",
    "DeepSpeed": "ACCELERATE_USE_DEEPSPEED",
}


def distributed_problem() -> str | None:
    """An FSDP or DeepSpeed launch on a machine without a GPU: accelerate (1.16) turns them on
    only for accelerator processes (``AcceleratorState`` sets FSDP for MULTI_GPU, MULTI_XPU, ...
    but not MULTI_CPU, and DeepSpeed only when not on the CPU), so the run would silently train
    with plain DDP, every process holding the whole model and optimiser state."""

    requested = [
        name
        for name, variable in SHARDING_LAUNCHES.items()
        if os.environ.get(variable, "false").lower() in ("1", "true")
    ]
    if not requested or has_accelerator():
        return None
    import accelerate

    return (
        f"{requested[0]} was requested (accelerate launch with distributed_type "
        f"{requested[0].upper()}) on a machine without a GPU: accelerate "
        f"{accelerate.__version__} turns {requested[0]} on only for GPU (and other accelerator) "
        "processes and would train with plain DDP instead; on CPU use torchrun "
        "--nproc_per_node N -m seglm train (DDP over gloo), on GPUs "
        "configs/accelerate/fsdp.yaml (docs/training.md)"
    )


def has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator else torch.cuda.is_available()


def check_task_name(name: str) -> None:
    from seglm.tasks import task_class

    try:
        task_class(name)
    except ValueError as error:
        raise ConfigError(f"field 'task': {error}") from None


def check_model_name(name: str) -> None:
    """Catch a missing folder or a typo of an alias before going to the hub."""
    from seglm.models import model_name_problem

    problem = model_name_problem(name)
    if problem:
        raise ConfigError(problem)


def load_checked_tokenizer(config: TrainConfig) -> Any:
    from seglm.models import load_tokenizer

    try:
        return load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    except OSError as error:
        raise ConfigError(f"model {config.model!r}: cannot load its tokenizer: {error}") from None
    except ValueError as error:  # transformers' word for a tokenizer it cannot build
        if "trust_remote_code" in str(error) and not config.trust_remote_code:
            raise ConfigError(remote_code_refused(config.model)) from None
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"model {config.model!r}: cannot load its tokenizer: {first}") from None


def remote_code_refused(model: str) -> str:
    return (
        f"model {model!r} needs custom code (an auto_map in its config) to load; read that "
        "code, then pass --trust-remote-code to run it"
    )


def check_selection_split(config: TrainConfig, task: Any, eval_split: str | None) -> None:
    """Never choose the final weights on the data reported as test
    (docs/method.md, "Known defects", item 7)."""
    if eval_split is None or config.final_weights != "best" or "test" not in task.splits:
        return
    try:
        selects_on_test = task.resolve_split(eval_split) == task.resolve_split("test")
    except ValueError:
        return  # an unknown split fails with its own message when it is loaded
    if selects_on_test:
        raise ConfigError(
            f"eval_split {eval_split!r} is task {config.task!r}'s test data: keeping the best "
            "checkpoint on it would select on the test set; use a validation split, or "
            "final_weights: last to only watch the test loss"
        )
