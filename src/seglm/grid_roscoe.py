"""ROSCOE scores of a grid's predictions, computed once per cell into its roscoe.jsonl (the
report reads them; it loads no model itself)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from seglm.experiments import (
    cell_folder,
    finished_cells,
    grid_cells,
    read_grid_file,
)
from seglm.folders import hold, write_owned
from seglm.report.load import read_cell_predictions
from seglm.runs import EVAL_SETTINGS_FILE, ROSCOE_FILE, read_json

EMBEDDING_FAMILIES = ("semantic_alignment", "semantic_similarity")


def score_roscoe(
    root: str | Path, families: Sequence[str] = EMBEDDING_FAMILIES, progress: bool = True
) -> list[Path]:
    """Score every finished cell's predictions with ROSCOE against their questions, into the
    cell's roscoe.jsonl (cells that have one are skipped); returns the folders scored.

    The default families need only sentence and token embeddings (all-MiniLM-L6-v2 offline);
    docs/roscoe.md says which models the others need and what they cost."""
    from seglm.metrics.roscoe import RoscoeConfig, RoscoeScorer

    root = Path(root)
    grid_file = read_grid_file(root)
    cells = finished_cells(root, grid_cells(grid_file))
    folders = [cell_folder(root, c) for c in cells]
    pending = [folder for folder in folders if not (folder / ROSCOE_FILE).is_file()]
    if not pending:
        return []
    data_dir = grid_file.get("train", {}).get("data_dir")
    scorer = RoscoeScorer(RoscoeConfig(families=tuple(families), progress=progress))
    for folder in pending:
        records = read_cell_predictions(folder)
        questions = _questions(folder, data_dir)
        chains = [{"source": questions[r["id"]], "hypothesis": r["prediction"]} for r in records]
        scores = scorer.score(chains).scores
        lines = [
            json.dumps({"id": r["id"], **s}) + "\n" for r, s in zip(records, scores, strict=True)
        ]
        # Its presence marks the cell scored: a kill while writing must not leave half of it.
        with hold(folder, "ROSCOE scoring"):
            write_owned(folder, ROSCOE_FILE, "".join(lines))
    return pending


def _questions(folder: Path, data_dir: str | None) -> dict[str, str]:
    """Each evaluated example's question (ROSCOE's source), by id, from the evaluated task."""
    from seglm.tasks import get_task

    settings = read_json(folder / EVAL_SETTINGS_FILE) or {}
    # The question does not depend on how the prompt is rendered (a chat template needs a
    # tokenizer that this does not load).
    options = {**(settings.get("task_options") or {}), "prompt_style": "plain"}
    task = get_task(settings["task"], **options)
    return {e.id: e.source for e in task.load(settings["split"], data_dir=data_dir)}
