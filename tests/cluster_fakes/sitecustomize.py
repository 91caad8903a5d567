"""Python imports this at start-up when its folder is on PYTHONPATH, as tests/test_cluster.py
puts it for the processes that submitit starts. When ``SEGLM_FAKE_PLAN`` names a JSON file
(``{"state": FOLDER, "arms": {ARM: BEHAVIOUR}}``), seglm's training and evaluation become the
stand-ins of tests/grid_fakes.py, and an arm's training can misbehave:

- ``raise``: it raises (the cell records its error, as a real failure does);
- ``die``: the process exits at once, without a result, at every attempt;
- ``die_once``: the first attempt dies, the next trains;
- ``preempt_once``: the first attempt signals itself with SIGUSR2, as Slurm does before a
  preemption, and waits to be requeued; the next trains;
- ``slow``: it takes a second.

Each training call appends a line to FOLDER/ARM-seedS (the attempts): the process id and the
number of threads torch uses.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

PLAN = os.environ.get("SEGLM_FAKE_PLAN")

if PLAN:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for grid_fakes

    from grid_fakes import FakeRuns, arm_of

    import seglm.evaluate
    import seglm.train

    plan = json.loads(Path(PLAN).read_text())
    behaviours = plan["arms"]
    fakes = FakeRuns(fail=lambda arm: behaviours.get(arm) == "raise")

    def train(config, progress=True):
        arm, seed = arm_of(config.run_dir)
        log = Path(plan["state"]) / f"{arm}-seed{seed}"
        import torch

        with log.open("a") as handle:
            handle.write(f"{os.getpid()} {torch.get_num_threads()}\n")
        attempt = len(log.read_text().splitlines())
        behaviour = behaviours.get(arm)
        if behaviour == "die" or (behaviour == "die_once" and attempt == 1):
            os._exit(3)
        if behaviour == "slow":
            time.sleep(1)
        if behaviour == "preempt_once" and attempt == 1:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(60)  # submitit's handler requeues the job and exits before this ends
        return fakes.train(config, progress)

    seglm.train.train = train
    seglm.evaluate.evaluate = fakes.evaluate
