"""seglm.folders and seglm.paths: which files of a folder are seglm's, one writer per folder,
and names that would make paths outside the folder given; the strict YAML reader and the ranges
of the settings. Nothing here loads a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from grid_fakes import FakeRuns
from train._helpers import save_tiny_model

from seglm.config import ConfigError, EvalConfig, TrainConfig, read_yaml, resolve_config
from seglm.experiments import Grid, GridError, load_grid, run_grid
from seglm.folders import (
    MANIFEST_FILE,
    FolderBusy,
    FolderError,
    check_replaceable,
    claim,
    hold,
    ownership,
    record_files,
    remove_owned,
)
from seglm.paths import PathNameError, check_inside, check_name
from seglm.report import build_report
from seglm.schema import parse_yaml, read_items
from seglm.tasks import get_task


def plant(folder: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def assert_intact(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name


USER_FILES = {"notes.txt": b"mine\n", "data.csv": b"a,b\n1,2\n", "sub/keep.bin": b"\x00\x01"}


# -- ownership ---------------------------------------------------------------------------------


def test_a_folder_seglm_did_not_make_is_refused_naming_its_first_file(tmp_path: Path) -> None:
    plant(tmp_path, {"b.txt": b"b", "a/x.txt": b"x"})
    with pytest.raises(FolderError, match=r"not empty and seglm did not make it \(a/x\.txt is"):
        claim(tmp_path, "run folder")
    assert not (tmp_path / MANIFEST_FILE).exists()
    # With `hold`, nothing is written there either, not even the lock file.
    with pytest.raises(FolderError, match=r"a/x\.txt"), hold(tmp_path, "evaluation"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.txt"]


def test_removal_deletes_only_what_seglm_wrote(tmp_path: Path) -> None:
    claim(tmp_path, "run folder")
    record_files(tmp_path, "config.yaml", "eval/metrics.json", folders=["checkpoint-2"])
    plant(tmp_path, {"config.yaml": b"c", "eval/metrics.json": b"{}", "checkpoint-2/w": b"w"})
    planted = plant(tmp_path, {**USER_FILES, "eval/mine.txt": b"m"})
    kept = remove_owned(tmp_path)
    assert sorted(kept) == ["data.csv", "eval/mine.txt", "notes.txt", "sub/keep.bin"]
    assert_intact(tmp_path, planted)
    for name in ("config.yaml", "eval/metrics.json", "checkpoint-2"):
        assert not (tmp_path / name).exists(), name
    assert ownership(tmp_path) is not None and not ownership(tmp_path).files  # type: ignore[union-attr]


def test_a_file_of_the_users_is_never_replaced(tmp_path: Path) -> None:
    claim(tmp_path, "report")
    plant(tmp_path, {"report.md": b"my draft"})
    with pytest.raises(FolderError, match=r"report\.md exists and seglm did not write it"):
        check_replaceable(tmp_path, "report.md")
    record_files(tmp_path, "report.json")
    (tmp_path / "report.json").write_text("{}")
    check_replaceable(tmp_path, "report.json")  # seglm's own: may be replaced


def test_an_archived_runs_folder_is_seglms_for_the_names_it_writes(tmp_path: Path) -> None:
    grid = {"tasks": ["arith"], "models": ["m"], "losses": ["ce"], "lambdas": [0.6], "seeds": [0]}
    plant(tmp_path, {"grid.json": json.dumps(grid).encode(), "summary.csv": b"x"})
    planted = plant(tmp_path, {"notes.txt": b"mine"})
    owned = claim(tmp_path, "grid")
    assert owned.files == {"grid.json", "summary.csv"}
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["files"] == sorted(owned.files)
    remove_owned(tmp_path)
    assert_intact(tmp_path, planted)
    # A config.yaml of the user's (not one seglm resolved and wrote) vouches for nothing.
    other = tmp_path / "other"
    plant(other, {"config.yaml": b"task: arith\nlearning_rate: 0.1\n"})
    with pytest.raises(FolderError, match=r"config\.yaml is not seglm's"):
        claim(other, "run folder")


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from seglm.folders import hold
    with hold(Path(sys.argv[1]), "training run"):
        Path(sys.argv[2]).write_text("held")
        time.sleep(60)
    """
)


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    folder, ready = tmp_path / "run", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ready)])
    try:
        while not ready.exists():
            assert holder.poll() is None, "the holder died"
        with pytest.raises(FolderBusy) as error, hold(folder, "evaluation", "wait"):
            pass
        assert f"is in use by another training run (pid {holder.pid} on " in str(error.value)
    finally:
        holder.kill()
        holder.wait()
    # Within one process the lock is re-entrant; released, anyone may take it.
    with hold(folder, "grid cell"), hold(folder, "training run"):
        pass


# -- names that become paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("..", "is '..'"),
        (".", "is '.'"),
        ("../escape", "holds a path separator"),
        ("a/b", "holds a path separator"),
        ("a\\b", "holds a path separator"),
        ("/etc", "holds a path separator"),
        ("", "is empty"),
    ],
)
def test_a_name_is_one_path_component(name: str, problem: str) -> None:
    with pytest.raises(PathNameError, match=problem):
        check_name(name, "task")
    assert check_name("gsm8k..v2", "task") == "gsm8k..v2"


def test_a_folder_a_symlink_points_out_of_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "arith").symlink_to(outside)
    with pytest.raises(PathNameError, match="lies outside"):
        check_inside(root, root / "arith" / "m", "cell folder")
    assert check_inside(root, root / "gsm8k" / "m", "cell folder") == root / "gsm8k" / "m"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks": ["../../escape"]}, "task '../../escape' holds a path separator"),
        ({"tasks": [".."]}, "task '..' is '..'"),
        ({"models": ["", " "]}, "'models' lists nothing"),
    ],
)
def test_grid_names_that_would_leave_the_runs_folder_are_refused(
    changes: dict[str, list[str]], message: str
) -> None:
    values = {"tasks": ["arith"], "models": ["m"], "losses": ["ce"], **changes}
    with pytest.raises(GridError, match=message):
        Grid(**values)
    # A model path keeps its last part as the folder name, never '..'.
    assert [str(c.relative_dir) for c in Grid(["arith"], ["../.."], ["ce"]).cells()] == [
        "arith/model/ce-lam1/seed0"
    ]


def test_a_tampered_grid_json_and_a_symlinked_cell_are_refused_by_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeRuns().install(monkeypatch)
    root, model = tmp_path / "runs", save_tiny_model(tmp_path / "m")
    run_grid(Grid(["arith"], [str(model)], ["ce"], eval=EvalConfig(limit=4)), root, progress=False)
    grid_file = root / "grid.json"
    original = grid_file.read_text()
    grid_file.write_text(original.replace('"tasks": [\n    "arith"', '"tasks": [\n    "../../x"'))
    with pytest.raises(GridError, match="holds a path separator"):
        build_report(root, resamples=100)
    grid_file.write_text(original)
    outside = tmp_path / "outside"
    (root / "arith").rename(outside)
    (root / "arith").symlink_to(outside)
    with pytest.raises(GridError, match=r"cell folder .* lies outside"):
        build_report(root, resamples=100)
    assert not (outside / "m" / "figures").exists() and not (tmp_path / "figures").exists()


def test_a_jsonl_split_name_cannot_read_outside_the_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "escape.jsonl").write_text('{"prompt": "p", "target": "t"}\n')
    task = get_task("jsonl", path=str(data))
    with pytest.raises(ValueError, match=r"split '\.\./escape' holds a path separator"):
        task.load("../escape")
    with pytest.raises(ConfigError, match=r"field 'split'.*holds a path separator"):
        EvalConfig(task="jsonl", split="../escape")
    with pytest.raises(ConfigError, match=r"field 'train_split'.*holds a path separator"):
        TrainConfig(train_split="/etc/passwd")


# -- strict YAML, option text, ranges ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: 1\ntask: arith\nseed: 2\n", "line 1 and line 3: key 'seed' is given twice"),
        ("task_options:\n  a: 1\n  a: 2\n", "line 2 and line 3: key 'a' is given twice"),
        ("1: 2\n", "line 1: key 1 is not a name"),
        ("task_options: {[a]: 1}\n", "line 1: key \\['a'\\] is not a name"),
    ],
)
def test_yaml_keys_given_twice_or_not_text_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}, {message}"):
        read_yaml(path)


def test_grid_files_and_key_value_items_read_yaml_strictly(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("tasks: [arith]\nmodels: [m]\nlosses: [ce]\nlosses: [focal]\n")
    with pytest.raises(GridError, match="line 3 and line 4: key 'losses' is given twice"):
        load_grid(path)
    with pytest.raises(ConfigError, match="key 'a' is given twice"):
        read_items(["task_options={a: 1, a: 2}"], "--train")
    # Merge keys override on purpose.
    assert parse_yaml("base: &b {x: 1}\nother:\n  <<: *b\n  x: 2\n", "f")["other"] == {"x": 2}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"task: arith\nrun_name: caf\xe9\n", r"line 2: not UTF-8 text \(byte 0xe9\)"),
        (b"\x00\x01\xff", "a binary file, not YAML text"),
    ],
)
def test_files_that_are_not_utf8_text_are_refused(
    tmp_path: Path, data: bytes, message: str
) -> None:
    config, grid = tmp_path / "config.yaml", tmp_path / "grid.yaml"
    config.write_bytes(data)
    grid.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        read_yaml(config)
    with pytest.raises(GridError, match=message):
        load_grid(grid)


def test_a_path_option_given_as_key_value_stays_whole(tmp_path: Path) -> None:
    for path in ("notes #1.jsonl", "a: b.jsonl", "[x].jsonl", "*/"):
        config = resolve_config(overrides={"task": "jsonl", "task_options": [f"path={path}"]})
        assert config.task_options == {"path": path}
    typed = resolve_config(overrides={"task": "arith", "task_options": ["train_size=24"]})
    assert typed.task_options == {"train_size": 24}
    assert EvalConfig(task="jsonl", task_options=["path=a #b"]).task_options == {"path": "a #b"}
    with pytest.raises(ConfigError, match="option 'train_size' expects an integer, got 'x'"):
        resolve_config(overrides={"task": "arith", "task_options": ["train_size=x"]})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seed": 2**32}, "field 'seed' must be <= 4294967295"),
        ({"seed": -1}, "field 'seed' must be >= 0"),
        ({"max_length": 1}, "field 'max_length' must be >= 2"),
        ({"model": " "}, "field 'model' expects a name, got an empty one"),
        ({"task": ".."}, "field 'task' '..' is '..'"),
    ],
)
def test_numeric_ranges_and_names_are_enforced(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config(overrides=overrides)


def test_grid_seeds_and_eval_seed_have_the_same_range() -> None:
    with pytest.raises(GridError, match=r"seeds\[0\]' must be <= 4294967295"):
        Grid(["arith"], ["m"], ["ce"], seeds=[2**40])
    with pytest.raises(ConfigError, match="field 'seed' must be <= 4294967295"):
        EvalConfig(seed=2**40)


@pytest.mark.parametrize(
    "text",
    ["not json", '{"files": ["../outside.txt"], "folders": []}', '{"files": ["/etc/x"]}'],
)
def test_the_manifest_of_a_folder_cannot_be_tampered_into_a_delete(
    tmp_path: Path, text: str
) -> None:
    folder = tmp_path / "run"
    claim(folder, "run folder")
    (tmp_path / "outside.txt").write_text("mine")
    (folder / MANIFEST_FILE).write_text(text)
    with pytest.raises(FolderError, match="seglm cannot tell its files from yours"):
        remove_owned(folder)
    assert os.listdir(folder) == [MANIFEST_FILE]
    assert (tmp_path / "outside.txt").read_text() == "mine"
