"""Which files of a folder are seglm's, and one writer per folder.

Every folder seglm writes (a run folder, an evaluation folder, a grid's runs folder, a report's
folder) holds ``.seglm-files.json``, the *manifest*: the files seglm wrote there (paths relative
to the folder) and the folders it made whole (a run's ``checkpoint-N``, which the Trainer deletes
whole when it keeps fewer). seglm replaces or deletes only those; every other file is the user's
and stays as it is, ``--overwrite`` included. A folder that is not empty and that seglm did not
make is refused, naming its first file.

A folder that seglm wrote before manifests existed (an archived runs folder) has none. It counts
as seglm's when it holds a file that only seglm writes (a resolved ``config.yaml``, an
``eval_config.json``, a ``grid.json``), and then the files seglm writes by name are its own:
those :mod:`seglm.runs` names, a run's checkpoints and the Trainer's files at its root. The
first write into such a folder records them in a new manifest.

``.seglm.lock`` is held (``flock``) by the one process that writes the folder, for as long as it
writes; another writer is refused at once, naming the holder (process, host, start, command).
The kernel drops the lock when the holder exits, however it exits, so a lock file left behind
blocks no one. Within one process the lock is re-entrant (a grid cell holds its folder while
training and evaluation, which hold it too, write it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglm.paths import name_problem
from seglm.runs import (
    CELL_ERROR_FILE,
    CHECKPOINT_NAME,
    EVAL_SETTINGS_FILE,
    FIGURES_DIR,
    GRID_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_JSON,
    REPORT_MARKDOWN,
    ROSCOE_FILE,
    RUN_CONFIG_FILE,
    SUMMARY_CSV,
    SUMMARY_JSON,
    TRAIN_LOG_FILE,
    TRAIN_REPORT_FILE,
    folder_problem,
    write_atomically,
)

logger = logging.getLogger(__name__)

MANIFEST_FILE = ".seglm-files.json"
LOCK_FILE = ".seglm.lock"
# seglm's own bookkeeping, never anyone's data: the manifest, locks (the evaluation's former
# one too), and the staging file of an atomic write that a crash left behind.
BOOKKEEPING = re.compile(
    r"^(\.seglm-files\.json|\.seglm\.lock|\.seglm-eval\.lock|\..+\.[0-9]+\.tmp)$"
)
# What seglm writes by name (seglm.runs), for folders without a manifest.
KNOWN_FILES = frozenset(
    {
        RUN_CONFIG_FILE,
        TRAIN_LOG_FILE,
        TRAIN_REPORT_FILE,
        EVAL_SETTINGS_FILE,
        PREDICTIONS_FILE,
        METRICS_FILE,
        ROSCOE_FILE,
        GRID_FILE,
        SUMMARY_CSV,
        SUMMARY_JSON,
        CELL_ERROR_FILE,
        REPORT_MARKDOWN,
        REPORT_JSON,
    }
)
# What the Trainer writes at a run folder's root (save_model, save_state), and the ranks' shares
# of an evaluation's predictions: seglm's in a folder without a manifest, and names a user's file
# may not have in a run folder (training would replace it).
TRAINER_FILES = re.compile(
    r"^(adapter_model\.|adapter_config\.json$|model[.-]|pytorch_model|tokenizer|special_tokens_map"
    r"|chat_template|added_tokens|vocab\.|merges\.txt$|config\.json$|generation_config\.json$"
    r"|trainer_state\.json$|training_args\.bin$|README\.md$)"
)
SHARE_FILE = re.compile(r"^predictions\.rank[0-9]+\.jsonl$")
FIGURE_FILE = re.compile(r"^[^/]+-(main|lambda|errors|training|correlations)\.png$")


class FolderError(ValueError):
    """A folder seglm may not write: another process's, or holding files that are not seglm's."""


class FolderBusy(FolderError):
    """A folder that another process holds (:func:`hold`)."""


# -- the manifest ------------------------------------------------------------------------------


@dataclass
class Manifest:
    """The files seglm wrote in a folder (relative paths) and the folders it made whole."""

    files: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)

    def owns(self, relative: str) -> bool:
        if relative in self.files or relative in self.folders:
            return True
        parts = relative.split("/")
        return any("/".join(parts[:end]) in self.folders for end in range(1, len(parts)))


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest; None when it has none. One that does not read is an error: seglm
    cannot tell its files from the user's."""
    path = folder / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise FolderError(f"cannot read {path}: {error.strerror}") from None
    try:
        values = json.loads(text)
        manifest = Manifest(set(values["files"]), set(values["folders"]))
        entries = [*manifest.files, *manifest.folders]
    except (ValueError, KeyError, TypeError):
        entries = [None]
    outside = [e for e in entries if not isinstance(e, str) or any(map(name_problem, e.split("/")))]
    if outside:
        raise FolderError(
            f"{path} is not seglm's list of its files (JSON with 'files' and 'folders', each a "
            "path inside the folder); seglm cannot tell its files from yours there: choose "
            "another folder"
        )
    return manifest


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    values = {"files": sorted(manifest.files), "folders": sorted(manifest.folders)}
    write_atomically(folder / MANIFEST_FILE, json.dumps(values, indent=1) + "\n")


def ownership(folder: Path) -> Manifest | None:
    """What seglm owns in ``folder``: its manifest, or for a folder seglm wrote before manifests
    existed, what it wrote by name; None when seglm did not make the folder."""
    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest
    return _earlier_ownership(folder) if _made_by_earlier_seglm(folder) else None


def _made_by_earlier_seglm(folder: Path) -> bool:
    """Whether the folder holds a file that only seglm writes: a resolved config.yaml (seglm
    writes every field, ``overwrite`` and ``resume`` included), an eval_config.json, a
    grid.json."""
    checks = {
        RUN_CONFIG_FILE: ("model", "task", "loss", "seed", "overwrite", "resume"),
        EVAL_SETTINGS_FILE: ("model", "adapter", "task", "split"),
        GRID_FILE: ("tasks", "models", "losses", "lambdas", "seeds"),
    }
    for name, keys in checks.items():
        path = folder / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            values = _yaml_keys(text) if name == RUN_CONFIG_FILE else json.loads(text)
        except (OSError, ValueError):
            continue
        if isinstance(values, dict) and all(key in values for key in keys):
            return True
    return False


def _yaml_keys(text: str) -> dict[str, Any]:
    """The top-level keys of seglm's own config.yaml (``key: value`` lines; it never reads the
    YAML of a folder it has not vouched for)."""
    return {line.split(":", 1)[0]: None for line in text.splitlines() if re.match(r"^\w+:", line)}


def _earlier_ownership(folder: Path) -> Manifest:
    manifest = Manifest()
    for entry in folder.iterdir():
        name = entry.name
        if entry.is_dir():
            if CHECKPOINT_NAME.match(name):
                manifest.folders.add(name)
            elif name == FIGURES_DIR:
                manifest.files.update(
                    f"{name}/{png.name}" for png in entry.iterdir() if FIGURE_FILE.match(png.name)
                )
        elif name in KNOWN_FILES or TRAINER_FILES.match(name) or SHARE_FILE.match(name):
            manifest.files.add(name)
    return manifest


def foreign_files(folder: Path, manifest: Manifest | None = None) -> list[str]:
    """The files in ``folder`` (relative paths, sorted) that seglm does not own, leaving out the
    folders inside it that are seglm folders of their own (a grid's cells)."""
    manifest = manifest if manifest is not None else ownership(folder) or Manifest()
    found: list[str] = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        relative = entry.name
        if BOOKKEEPING.match(relative) or manifest.owns(relative):
            continue
        if entry.is_dir() and not entry.is_symlink():
            found += [f"{relative}/{name}" for name in _foreign_below(entry, manifest, relative)]
        else:
            found.append(relative)
    return found


def _foreign_below(folder: Path, manifest: Manifest, prefix: str) -> list[str]:
    if (folder / MANIFEST_FILE).is_file() or _made_by_earlier_seglm(folder):
        return []  # a seglm folder of its own: its manifest speaks for it
    found: list[str] = []
    for entry in sorted(folder.iterdir()):
        relative = f"{prefix}/{entry.name}"
        if manifest.owns(relative) or BOOKKEEPING.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            found += [f"{entry.name}/{name}" for name in _foreign_below(entry, manifest, relative)]
        else:
            found.append(entry.name)
    return found


def claim(folder: Path, what: str) -> Manifest:
    """Make ``folder`` seglm's to write ``what`` in (``"run folder"``, ...): create it, or
    accept one seglm made (files of the user's in it stay) or an empty one; a folder that is not
    empty and that seglm did not make is refused, naming its first file. Returns what seglm
    owns there."""
    manifest = check_claim(folder, what)
    if not (folder / MANIFEST_FILE).is_file():
        _writable(folder, what)
        _write_manifest(folder, manifest)
    return manifest


def check_claim(folder: Path, what: str) -> Manifest:
    """What :func:`claim` checks, without writing anything: what seglm owns in ``folder``."""
    problem = folder_problem(folder)
    if problem:
        raise FolderError(f"{what}: {problem}; choose another folder")
    manifest = ownership(folder) if folder.is_dir() else None
    if manifest is not None:
        return manifest
    foreign = foreign_files(folder, Manifest()) if folder.is_dir() else []
    if foreign:
        raise FolderError(
            f"{folder} is not empty and seglm did not make it ({foreign[0]} is not seglm's); "
            f"seglm writes a {what} only into a new or empty folder, or one it made: choose "
            "another folder"
        )
    return Manifest()


def _writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FolderError(
            f"cannot create the {what} {folder}: {error.strerror}; choose a folder you can write"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FolderError(
            f"cannot write in the {what} {folder} (permission denied); choose a folder you can "
            "write"
        )


def record_files(folder: Path, *files: str, folders: Iterable[str] = ()) -> None:
    """Add ``files`` and whole ``folders`` (relative paths) to the folder's manifest; the
    caller holds the folder (:func:`hold`) and writes them."""
    manifest = ownership(folder) or Manifest()
    before = (len(manifest.files), len(manifest.folders))
    manifest.files.update(files)
    manifest.folders.update(folders)
    if (len(manifest.files), len(manifest.folders)) != before or not (
        folder / MANIFEST_FILE
    ).is_file():
        _write_manifest(folder, manifest)


def write_owned(folder: Path, relative: str, text: str) -> Path:
    """Write ``folder/relative`` atomically as a file of seglm's: recorded first, so that a
    crash never leaves a file of seglm's that the manifest does not name. A file of that name
    that seglm did not write is refused."""
    check_replaceable(folder, relative)
    path = folder / relative
    record_files(folder, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)
    return path


def file_stamps(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Each file at the top of ``folder`` with what a write changes (inode, size, mtime)."""
    stamps = {}
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            status = entry.stat()
            stamps[entry.name] = (status.st_ino, status.st_size, status.st_mtime_ns)
    return stamps


def written_since(folder: Path, before: dict[str, tuple[int, int, int]]) -> list[str]:
    """The files at the top of ``folder`` made or changed since ``before`` (:func:`file_stamps`),
    for a library that writes files seglm does not name (the Trainer's save_model)."""
    changed = [name for name, stamp in file_stamps(folder).items() if before.get(name) != stamp]
    return sorted(name for name in changed if not BOOKKEEPING.match(name))


def check_replaceable(folder: Path, relative: str, manifest: Manifest | None = None) -> None:
    """Refuse to replace ``folder/relative`` when it exists and seglm did not write it."""
    path = folder / relative
    if not (path.exists() or path.is_symlink()):
        return
    owned = manifest if manifest is not None else ownership(folder) or Manifest()
    if not owned.owns(relative) or path.is_symlink():
        raise FolderError(
            f"{path} exists and seglm did not write it; seglm replaces only its own files: "
            "move it away, or choose another folder"
        )


def remove_owned(folder: Path, names: Iterable[str] | None = None) -> list[str]:
    """Delete what seglm owns in ``folder`` (only what is under ``names``, when given), the
    seglm folders inside it included; returns the files left in place because they are not
    seglm's."""
    manifest = ownership(folder)
    if manifest is None or not folder.is_dir():
        return []
    chosen = None if names is None else list(names)

    def selected(relative: str) -> bool:
        return chosen is None or any(
            relative == name or relative.startswith(f"{name}/") for name in chosen
        )

    removed: list[Path] = []
    for whole in sorted(manifest.folders):
        if selected(whole) and (folder / whole).is_dir():
            shutil.rmtree(folder / whole)
            removed.append(folder / whole)
    for relative in sorted(manifest.files):
        if selected(relative) and (folder / relative).is_file():
            (folder / relative).unlink()
            removed.append(folder / relative)
    if chosen is None:
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink() and (entry / MANIFEST_FILE).is_file():
                remove_owned(entry)
    kept_files = {f for f in manifest.files if not selected(f)}
    kept_folders = {f for f in manifest.folders if not selected(f)}
    _write_manifest(folder, Manifest(kept_files, kept_folders))
    _remove_emptied_folders(folder, removed)
    return [name for name in foreign_files(folder) if selected(name)]


def _remove_emptied_folders(folder: Path, removed: list[Path]) -> None:
    """The folders inside ``folder`` that the removal of seglm's files left empty."""
    parents = {parent for path in removed for parent in path.parents if folder in parent.parents}
    for parent in sorted(parents, key=lambda path: -len(path.parts)):
        with contextlib.suppress(OSError):
            parent.rmdir()  # only an empty folder goes


# -- the lock ----------------------------------------------------------------------------------

_HELD: dict[Path, list[Any]] = {}  # lock file -> [FileLock, times held]: re-entrant per process


@contextlib.contextmanager
def hold(folder: Path, what: str, advice: str = "", wait: float = 0.0) -> Iterator[None]:
    """Hold ``folder`` as the one writer of ``what`` (``"training run"``, ``"evaluation"``)
    until the block ends: claim it (:func:`claim`) and lock its ``.seglm.lock``. While another
    process holds it, this one is refused at once (after ``wait`` seconds), naming the holder;
    ``advice`` says what to do then."""
    from filelock import FileLock, Timeout

    check_claim(folder, what)  # before the lock file is made: a folder not seglm's is refused
    _writable(folder, what)
    path = (folder / LOCK_FILE).resolve()
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    lock = FileLock(path, timeout=wait, on_acquired=_say_who_holds(what))
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusy(
            f"{folder} is in use by another {_holder(path)}; "
            f"{advice or 'wait for it to finish, or choose another folder'}"
        ) from None
    except OSError as error:  # a file system without locks (ENOLCK, EOPNOTSUPP)
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        logger.warning(
            "%s: cannot lock it (%s); a second %s into it would not be noticed", folder, error, what
        )
        claim(folder, what)
        yield
        return
    _HELD[path] = [lock, 1]
    try:
        claim(folder, what)
        yield
    finally:
        del _HELD[path]
        lock.release()


def _say_who_holds(what: str) -> Any:
    """The lock file's text, which a refused writer shows: what this process writes, its id,
    host, start and command."""

    def write(descriptor: int) -> None:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(["seglm", *sys.argv[1:]])[:300]
        text = f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {started}: {command})"
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (text + "\n").encode(), 0)

    return write


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "writer (a process that has not said which yet)"
