"""The one check of every name that becomes a path: a task, a split, a model's folder name, an
arm, a grid.json entry. A name is one folder or file name, never a path: no separator, not
``.`` or ``..``, not absolute; and a folder seglm computes from names must lie (symlinks
followed) inside the folder the user gave. Standard library only, so every layer may use it."""

from __future__ import annotations

import os
from pathlib import Path

_SEPARATORS = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}


class PathNameError(ValueError):
    """A name that would make a path outside the folder it belongs in."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one component of a path, or None."""
    if not name.strip():
        return "is empty"
    if "\0" in name:
        return "holds a NUL character"
    if any(separator in name for separator in _SEPARATORS) or os.path.isabs(name):
        return "holds a path separator (a name is one folder or file name, not a path)"
    if name in (".", ".."):
        return f"is {name!r}, which names a folder, not a new one"
    return None


def check_name(name: str, what: str) -> str:
    """``name`` when it is one path component; else a PathNameError naming ``what`` it is."""
    problem = name_problem(name)
    if problem:
        raise PathNameError(f"{what} {name!r} {problem}")
    return name


def check_inside(root: Path, path: Path, what: str) -> Path:
    """``path`` when it resolves (symlinks followed) inside ``root``; else a PathNameError."""
    resolved_root, resolved = root.resolve(), path.resolve()
    if resolved != resolved_root and not resolved.is_relative_to(resolved_root):
        raise PathNameError(
            f"{what} {path} lies outside {root} (it resolves to {resolved}); a symbolic link "
            f"or a name in it points out of the folder"
        )
    return path
