"""Run, evaluation and grid folders: checks that every writer shares."""

from __future__ import annotations

from pathlib import Path


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a folder: it, or a folder above it, is a file."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                return None
            what = "is a file" if candidate == path else f"is inside {candidate}, a file"
            return f"{path} {what}, not a folder"
    return None
