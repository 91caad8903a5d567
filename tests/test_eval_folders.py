"""An evaluation folder holds the user's files safely: --overwrite replaces seglm's files only,
a folder seglm did not make is refused, a file of the user's named like one seglm writes is never
replaced, and damaged weights are refused before they load. A tiny random Llama evaluates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from train._helpers import save_tiny_model

from seglm.evaluate import EvalError, evaluate
from seglm.folders import claim

FAST = {"limit": 2, "max_new_tokens": 3}
USER_FILES = {"notes.txt": b"mine\n", "plots/a.png": b"\x89PNG", "old/metrics.json": b"{}"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def plant(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_overwrite_replaces_seglms_files_and_keeps_the_users(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    evaluate(str(tiny), "arith", "test", out, **FAST)
    plant(out, USER_FILES)
    result = evaluate(str(tiny), "arith", "test", out, overwrite=True, limit=3, max_new_tokens=3)
    assert result.n == 3 and result.resumed == 0
    for name, data in USER_FILES.items():
        assert (out / name).read_bytes() == data, name


def test_a_folder_seglm_did_not_make_is_refused(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    files = {"predictions.jsonl": b'{"id": "x"}\n', "metrics.json": b'{"mine": 1}'}
    plant(out, files)
    for overwrite in (False, True):
        with pytest.raises(EvalError, match=r"mine is not empty and seglm did not make it \("):
            evaluate(str(tiny), "arith", "test", out, overwrite=overwrite, **FAST)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_a_file_of_the_users_named_like_seglms_is_never_replaced(
    tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    claim(out, "evaluation")  # a folder seglm made, then the user put a metrics.json there
    (out / "metrics.json").write_text('{"mine": 1}')
    with pytest.raises(EvalError, match=r"metrics\.json exists and seglm did not write it"):
        evaluate(str(tiny), "arith", "test", out, overwrite=True, **FAST)
    assert (out / "metrics.json").read_text() == '{"mine": 1}'


def test_damaged_weights_are_refused_before_they_load(tiny: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(EvalError, match=r"model\.safetensors is cut short or damaged \("):
        evaluate(str(model), "arith", "test", tmp_path / "eval", **FAST)
    assert not (tmp_path / "eval").exists()
