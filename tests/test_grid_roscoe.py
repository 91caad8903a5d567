"""seglm.grid_roscoe: a cell's roscoe.jsonl marks it scored, so it must be whole or absent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from grid_fakes import FakeRuns
from train._helpers import save_tiny_model

from seglm.experiments import EvalConfig, Grid, run_grid
from seglm.grid_roscoe import score_roscoe
from seglm.runs import ROSCOE_FILE

EXAMPLES = 40


class StubScorer:
    """Needs no model: a chain's score is its question's length."""

    def __init__(self, config: Any) -> None:
        pass

    def score(self, examples: Any) -> SimpleNamespace:
        scores = [{"faithfulness_step": len(example["source"]) / 1000} for example in examples]
        return SimpleNamespace(scores=scores)


def test_a_kill_while_writing_roscoe_jsonl_leaves_the_cell_to_score_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save_tiny_model(tmp_path / "model")
    FakeRuns().install(monkeypatch)
    root = tmp_path / "runs"
    grid = Grid(
        tasks=["arith"], models=[str(model)], losses=["ce"], seeds=[0],
        eval=EvalConfig(limit=EXAMPLES),
    )  # fmt: skip
    run_grid(grid, root, progress=False)
    # The scoring process dies in the middle of writing the file: the kernel kills it (SIGXFSZ)
    # when a write passes 300 bytes, about five of the forty lines.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import seglm.metrics.roscoe
        from seglm.grid_roscoe import score_roscoe
        from test_grid_roscoe import StubScorer
        seglm.metrics.roscoe.RoscoeScorer = StubScorer
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: a write fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
        score_roscoe(sys.argv[1], progress=False)
    """)
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", script, str(root)], env=environment, capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr.decode()[-2000:]
    (cell,) = [folder for folder in root.rglob("seed0")]
    assert not (cell / ROSCOE_FILE).exists()  # not taken for a scored cell
    monkeypatch.setattr("seglm.metrics.roscoe.RoscoeScorer", StubScorer)
    assert score_roscoe(root, progress=False) == [cell]
    lines = [json.loads(line) for line in (cell / ROSCOE_FILE).read_text().splitlines()]
    assert len(lines) == EXAMPLES and lines[-1]["id"] == f"arith/test/{EXAMPLES - 1}"
