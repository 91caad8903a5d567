"""``python -m seglm``: the CLI, also for launchers (``torchrun -m seglm train ...``,
``accelerate launch -m seglm train ...``)."""

from seglm.cli import app

if __name__ == "__main__":
    app(prog_name="seglm")
