"""``seglm.train.train`` under ``accelerate launch --config_file configs/accelerate/fsdp.yaml``
on CPU processes (gloo), for tests/test_fsdp.py.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \\
        tests/train/fsdp_worker.py RUNS.json

RUNS.json is a list of TrainConfig dicts; the worker trains them one after the other in the same
processes (as ``seglm compare`` does) and writes nothing else: each run folder is the result.

accelerate 1.16 turns FSDP on only for accelerator process groups: ``AcceleratorState`` sets
``distributed_type = FSDP`` when it is MULTI_GPU, MULTI_NPU, MULTI_XPU, ... but not MULTI_CPU,
so on CPU the FSDP config silently trains with DDP (and seglm refuses it, see
``seglm.train.checks.distributed_problem``). :func:`enable_fsdp_on_cpu` does on CPU what accelerate
does on a GPU: the Trainer's Accelerator gets ``distributed_type = FSDP`` and the FSDP plugin
built from the same environment variables that ``accelerate launch`` set from the config file.
Everything else (the Trainer's FSDP paths, accelerate's ``fully_shard`` wrapping, its
full-state-dict gathering on save, seglm's fused head) is the code that runs on GPUs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def enable_fsdp_on_cpu() -> None:
    import accelerate
    import transformers.trainer
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    import seglm.train.checks

    class CpuFsdpAccelerator(accelerate.Accelerator):
        def __init__(self, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, fsdp_plugin=fsdp_plugin, **kwargs)
            state = self.state
            if state.distributed_type != DistributedType.MULTI_CPU:
                return
            plugin = fsdp_plugin or FullyShardedDataParallelPlugin()  # from the environment
            if state.mixed_precision != "no":
                plugin.set_mixed_precision(state.mixed_precision)
            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = plugin
            # AcceleratorState() copies PartialState's shared state each time it is built.
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    transformers.trainer.Accelerator = CpuFsdpAccelerator
    # With the shim accelerate no longer ignores FSDP on CPU, so seglm need not refuse it.
    seglm.train.checks.distributed_problem = lambda: None


def main(runs_file: str) -> None:
    import torch

    torch.set_num_threads(1)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        raise SystemExit("run under accelerate launch with an FSDP config")
    enable_fsdp_on_cpu()
    from seglm.train import train

    with open(runs_file) as handle:
        runs = json.load(handle)
    for config in runs:
        result = train(config, progress=False)
        if torch.distributed.get_rank() == 0:
            print(f"trained {result.run_dir}: fused_loss={result.report['fused_loss']}")


if __name__ == "__main__":
    main(sys.argv[1])
