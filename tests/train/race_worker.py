"""One of two ``seglm train`` processes started together into one run folder:
``python race_worker.py GO ARGS...`` waits until the file GO exists, then runs
``seglm train ARGS...`` (its exit status is the command's)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from seglm.cli import app


def main() -> None:
    go, args = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    while not go.exists():
        time.sleep(0.01)
    app(["train", *args], prog_name="seglm")


if __name__ == "__main__":
    main()
