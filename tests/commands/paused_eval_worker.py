"""``seglm eval`` that stops after its first batch is written, so a test can act while it holds
its output folder: ``python paused_eval_worker.py READY GO eval ARGS...``.

After appending the first batch to predictions.jsonl it creates the file READY and waits until
the file GO exists (a test may also SIGKILL it there), then goes on as ``seglm eval ARGS...``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import seglm.evaluate
from seglm.cli import app


def main() -> None:
    ready, go, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    append_records = seglm.evaluate.append_records

    def append_then_wait(path: Path, records: Any) -> None:
        append_records(path, records)
        if not ready.exists():
            ready.write_text(str(os.getpid()))
            while not go.exists():
                time.sleep(0.05)

    seglm.evaluate.append_records = append_then_wait
    app(args, prog_name="seglm")


if __name__ == "__main__":
    main()
