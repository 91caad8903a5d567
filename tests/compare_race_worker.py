"""One of two ``seglm compare`` processes started together on one runs folder, with the stand-in
training and evaluation of grid_fakes (each cell's training slowed to 1.5 s, so that the two
overlap): ``python compare_race_worker.py GO TRAINED_LOG MODEL RUNS``.

It waits until the file GO exists, then runs the grid; every cell it trains appends a line to
TRAINED_LOG (O_APPEND: the two processes' lines never mix). Its exit status is seglm compare's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from grid_fakes import FakeRuns

import seglm.evaluate
import seglm.train
from seglm.cli import app


def main() -> None:
    go, trained_log, model, runs = sys.argv[1:5]
    fakes = FakeRuns()

    def train(config: Any, progress: bool = True) -> None:
        with open(trained_log, "a") as log:
            log.write(f"{config.run_dir}\n")
        time.sleep(1.5)
        fakes.train(config, progress)

    seglm.train.train = train  # type: ignore[assignment]
    seglm.evaluate.evaluate = fakes.evaluate  # type: ignore[assignment]
    while not Path(go).exists():
        time.sleep(0.01)
    app(
        ["compare", "--model", model, "--losses", "ce,lovasz,focal", "--seeds", "2",
         "--eval-limit", "5", "--out", runs, "--quiet"],
        prog_name="seglm",
    )  # fmt: skip


if __name__ == "__main__":
    main()
