"""benchmarks/gpu.py at its CPU sizes: the rows it promises, values that agree across
implementations (so a row measuring the wrong thing fails), and failures that become rows."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from packaging.requirements import Requirement

from seglm.losses import LOSS_NAMES, Objective

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CE = Objective.from_spec("ce").spec


@pytest.fixture(scope="module")
def gpu() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # gpu.py imports benchmarks/fused.py
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_gpu", BENCHMARKS / "gpu.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while defined
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def run_main(gpu: ModuleType, *argv: str) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = gpu.main(list(argv))
    return code, printed.getvalue()


@pytest.fixture(scope="module")
def small_run(gpu: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    code, printed = run_main(gpu, "--small", "--out", str(out))
    return {"code": code, "printed": printed, **json.loads(out.read_text())}


def specs() -> list[str]:
    names = [name for name in LOSS_NAMES if name != "ce"]
    return [CE] + [Objective.from_spec(f"ce=0.6,{name}=0.4").spec for name in names]


def by_method(rows: list[dict[str, Any]], n: int, v: int, h: int) -> dict[tuple[str, str], dict]:
    return {
        (row["method"], row["spec"]): row
        for row in rows
        if (row["n"], row["v"], row["h"]) == (n, v, h)
    }


def test_every_row_is_there_and_seglm_rows_ran(gpu: ModuleType, small_run: dict) -> None:
    assert small_run["code"] == 0
    for shape in gpu.SMALL.shapes:
        rows = by_method(small_run["head"], *gpu.parse_shape(shape))
        expected = {(method, spec) for spec in specs() for method in (gpu.FUSED, gpu.MATERIALISED)}
        expected |= {(name, CE) for name in (gpu.LIGER, gpu.CCE, gpu.TRL)}
        assert set(rows) == expected
        for (method, _), row in rows.items():
            if method in (gpu.FUSED, gpu.MATERIALISED):
                assert row["status"] == "ok", row
                assert 0 < row["ms"] < 60_000 and len(row["ms_each"]) == gpu.SMALL.repeats
                assert row["peak_extra_gib"] is None  # no CUDA allocator statistics on a CPU
        # Liger-Kernel and CCE are Triton kernels: a CPU run names why it skipped them.
        for name in (gpu.LIGER, gpu.CCE):
            assert rows[name, CE]["status"] == "skipped"
            assert "CUDA" in rows[name, CE]["note"]
    train = {(row["spec"], row["fused"]): row for row in small_run["train_step"]}
    assert set(train) == {(spec, fused) for spec in specs() for fused in (True, False)}
    assert all(row["status"] == "ok" and row["tokens_per_s"] > 0 for row in train.values())


def test_fused_and_materialised_agree_for_each_loss(gpu: ModuleType, small_run: dict) -> None:
    for shape in gpu.SMALL.shapes:
        rows = by_method(small_run["head"], *gpu.parse_shape(shape))
        for spec in specs():
            fused, materialised = rows[gpu.FUSED, spec], rows[gpu.MATERIALISED, spec]
            assert fused["loss"] == pytest.approx(materialised["loss"], rel=1e-5)
            assert fused["grad_norm"] == pytest.approx(materialised["grad_norm"], rel=1e-4)
    # The same first step from the same adapter weights, whichever path computes the loss.
    train = {(row["spec"], row["fused"]): row for row in small_run["train_step"]}
    for spec in specs():
        fused, materialised = train[spec, True], train[spec, False]
        assert fused["first_step_loss"] == pytest.approx(materialised["first_step_loss"], rel=1e-5)
    # A random Llama (initializer_range 0.02) predicts almost uniformly: CE is about ln V.
    vocab = gpu.SMALL.model["vocab_size"]
    assert train[CE, True]["first_step_loss"] == pytest.approx(math.log(vocab), abs=0.1)


def test_ce_rows_equal_a_float64_computation_of_the_same_problem(
    gpu: ModuleType, small_run: dict
) -> None:
    for shape in gpu.SMALL.shapes:
        n, v, h = gpu.parse_shape(shape)
        inputs = gpu.head_inputs(
            n, v, h, gpu.SMALL.sequence_length, torch.device("cpu"), torch.float32
        )
        hidden = inputs.hidden.detach().double().requires_grad_()
        weight = inputs.weight.detach().double().requires_grad_()
        logits = hidden @ weight.T
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, v), inputs.labels[:, 1:].reshape(-1))
        loss.backward()
        expected = float(loss.detach())
        grad_norm = math.sqrt(float(hidden.grad.square().sum() + weight.grad.square().sum()))
        rows = by_method(small_run["head"], n, v, h)
        ce_rows = [rows[gpu.FUSED, CE], rows[gpu.MATERIALISED, CE]]
        if importlib.util.find_spec("trl") is not None:  # a dev install has TRL
            ce_rows.append(rows[gpu.TRL, CE])
        for row in ce_rows:
            assert row["status"] == "ok", row
            assert row["loss"] == pytest.approx(expected, rel=1e-5), row["method"]
            assert row["grad_norm"] == pytest.approx(grad_norm, rel=1e-4), row["method"]


def test_targets_and_tables(gpu: ModuleType, small_run: dict) -> None:
    rows = by_method(small_run["head"], *gpu.parse_shape(gpu.SMALL.shapes[0]))
    ce = rows[gpu.FUSED, CE]
    # Liger and CCE did not run on the CPU: their comparisons are not met, not missed.
    assert [(t["limit"], t["met"]) for t in ce["targets"]] == [(1.2, None), (1.5, None)]
    for spec in specs()[1:]:
        row = rows[gpu.FUSED, spec]
        (check,) = row["targets"]
        set_loss = bool({"gdice", "lovasz"} & set(Objective.from_spec(spec).weights))
        assert check["limit"] == (2.0 if set_loss else 1.2)
        assert check["ratio"] == pytest.approx(row["ms"] / ce["ms"])
        assert check["met"] == (check["ratio"] <= check["limit"])
    printed = small_run["printed"]
    head_lines = [line for line in printed.splitlines() if line.startswith("| 256 |")]
    assert len(head_lines) == len(small_run["head"])
    assert "| met |" in printed and "skipped: needs CUDA" in printed
    assert small_run["settings"]["loss_names"] == list(LOSS_NAMES)


def test_out_of_memory_becomes_a_row_status(gpu: ModuleType) -> None:
    def runs_out() -> dict:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.28 GiB")

    assert gpu.guarded({"method": gpu.CCE}, runs_out)["status"] == "OOM"


def test_a_failing_seglm_row_is_recorded_and_fails_the_run(
    gpu: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("broken on purpose")

    monkeypatch.setattr(gpu, "fused_objective_loss", broken)
    out = tmp_path / "gpu.json"
    code, _ = run_main(
        gpu, "--small", "--parts", "head", "--shapes", "64x128x16", "--out", str(out)
    )
    rows = json.loads(out.read_text())["head"]
    assert code == 1
    fused = [row for row in rows if row["method"] == gpu.FUSED]
    assert fused and all(row["status"] == "error" for row in fused)
    assert "broken on purpose" in fused[0]["note"]
    assert all(row["status"] == "ok" for row in rows if row["method"] == gpu.MATERIALISED)


def test_a_spent_time_budget_skips_the_rest(gpu: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    code, _ = run_main(gpu, "--small", "--time-budget-s", "0", "--out", str(out))
    result = json.loads(out.read_text())
    rows = result["head"] + result["train_step"]
    assert code == 0 and rows
    assert all(row["status"] == "skipped" for row in rows)
    assert {row["note"] for row in rows if row.get("method") not in (gpu.LIGER, gpu.CCE)} == {
        "time budget spent"
    }


# --- the GPU machine: seglm and the benchmark with only its image and the carried wheels ---------

REPOSITORY = BENCHMARKS.parent
# The image of this workplace's GPU machine (README.md, "Measuring on a GPU"), and what it lacks
# although this environment's newer versions of those packages may require some of it.
GPU_IMAGE = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "triton",
    "safetensors",
    "tokenizers",
    "rich",
    "typer",
    "scipy",
    "matplotlib",
    "pyyaml",
)
NOT_ON_GPU_IMAGE = {
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "gguf",
    "datasets",
    "trl",
    "liger-kernel",
    "cut-cross-entropy",
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(packages: tuple[str, ...]) -> set[str]:
    """The packages and what they require (not their extras), as installed here."""
    found: set[str] = set()
    pending = [normalized(name) for name in packages]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:  # triton: not on a CPU machine
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(normalized(requirement.name))
    return found


def modules_of(distributions: set[str]) -> set[str]:
    """Top-level module names of these distributions (installed or not)."""
    modules = {name.replace("-", "_") for name in distributions}
    for module, owners in importlib.metadata.packages_distributions().items():
        if any(normalized(owner) in distributions for owner in owners):
            modules.add(module)
    return modules


def carried_wheels() -> set[str]:
    lines = (BENCHMARKS / "gpu_wheels.txt").read_text().splitlines()
    return {normalized(Requirement(line).name) for line in lines if line and line[0] != "#"}


def on_gpu_image(carried: set[str]) -> dict[str, str]:
    """The environment of a process that finds only the image's packages and ``carried``."""
    image = requirement_closure(GPU_IMAGE) - NOT_ON_GPU_IMAGE
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(REPOSITORY / "tests" / "gpu_image"), str(REPOSITORY / "src"), str(BENCHMARKS)]
        ),
        "SEGLM_REPOSITORY": str(REPOSITORY),
        "SEGLM_IMAGE_MODULES": ",".join(sorted(modules_of(image | carried))),
        "OMP_NUM_THREADS": "1",
    }


IMPORTS = "import seglm.cli, seglm.train, seglm.evaluate, gpu, gpu_smoke"


def test_seglm_needs_more_than_the_gpu_image() -> None:
    """The control: without the carried wheels, seglm does not import there (so the hook that
    hides packages works, and the wheels are needed)."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS], env=on_gpu_image(set()), capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "No module named 'pydantic'" in done.stderr


def test_seglm_and_the_benchmark_import_with_the_gpu_image_and_the_carried_wheels() -> None:
    carried = carried_wheels()
    assert {"pydantic", "pydantic-core"} <= carried
    check = "import importlib.util; assert importlib.util.find_spec('gguf') is None; "
    done = subprocess.run(
        [sys.executable, "-c", check + IMPORTS],
        env=on_gpu_image(carried),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_smoke_test_runs_with_the_gpu_image_and_the_carried_wheels(tmp_path: Path) -> None:
    """benchmarks/gpu_smoke.py at its CPU sizes (fp32; fp16 needs CUDA): seglm train and seglm
    eval, as subprocesses that also find only the image's packages and the carried wheels."""
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(BENCHMARKS / "gpu.py"), "--small", "--parts", "smoke"]
    done = subprocess.run(
        [*command, "--out", str(out)],
        env=on_gpu_image(carried_wheels()),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = {row["step"]: row for row in json.loads(out.read_text())["smoke"]}
    assert list(rows) == ["model folder", "train fp32 ce=0.6,lovasz=0.4", "eval fp32"]
    assert all(row["status"] == "ok" for row in rows.values()), rows
    trained = rows["train fp32 ce=0.6,lovasz=0.4"]
    assert trained["fused_loss"] is True and trained["global_step"] == 2
    # A random Llama predicts almost uniformly: 0.6 CE of about ln V plus 0.4 Lovasz near 1.
    vocab = rows["model folder"]["vocab"]
    assert trained["losses"][0] == pytest.approx(0.6 * math.log(vocab) + 0.4, abs=0.2)
    assert rows["eval fp32"]["predictions"] == 2
    assert "| train fp32 ce=0.6,lovasz=0.4 | ok |" in done.stdout
