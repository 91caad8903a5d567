"""Train a run and SIGKILL this process while it saves a checkpoint, as a kill -9 would.

``python kill_worker.py CONFIG.json STEP POINT`` trains with ``seglm.train.train`` on the config
(a JSON object of TrainConfig fields) and kills itself during the save of ``checkpoint-STEP``:

- ``empty``: the checkpoint folder exists, nothing is in it yet;
- ``torn_state``: weights, optimiser, scheduler and RNG states are written and
  ``trainer_state.json`` (the Trainer writes it last) is cut in the middle.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerState

from seglm.config import resolve_config
from seglm.train import train


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_while_saving(step: int, point: str) -> None:
    if point == "empty":
        save_model = Trainer.save_model

        def save_model_then_die(self: Trainer, output_dir: Any = None, _internal_call=False):
            if _internal_call and self.state.global_step == step:
                os.makedirs(output_dir, exist_ok=True)
                die()
            return save_model(self, output_dir, _internal_call)

        Trainer.save_model = save_model_then_die  # type: ignore[method-assign]
    elif point == "torn_state":
        save_to_json = TrainerState.save_to_json

        def save_half_then_die(self: TrainerState, json_path: str) -> None:
            if self.global_step != step:
                return save_to_json(self, json_path)
            save_to_json(self, json_path)
            text = Path(json_path).read_text()
            Path(json_path).write_text(text[: len(text) // 2])
            die()

        TrainerState.save_to_json = save_half_then_die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def main() -> None:
    config_file, step, point = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    kill_while_saving(step, point)
    train(resolve_config(overrides=json.loads(Path(config_file).read_text())), progress=False)
    raise SystemExit("trained to the end: the kill point was never reached")


if __name__ == "__main__":
    main()
