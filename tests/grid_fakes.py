"""Stand-ins for ``seglm.train.train`` and ``seglm.evaluate.evaluate`` that write what the real
ones write (run folder files, predictions, metrics, each recorded as seglm's) in milliseconds,
with scores chosen by the test. They let grid and report tests check resuming, failures and
statistics without a model."""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seglm.config import EvalConfig, TrainConfig, write_config
from seglm.folders import record_files

EXAMPLES = 40
FAKES = Path(__file__).parent / "cluster_fakes"
COMPONENTS = ("ce", "focal", "sadl", "gdice", "lovasz", "dft")


def arm_of(folder: Path) -> tuple[str, int | None]:
    """(arm, seed) from a cell folder: ``.../lovasz-lam0.6/seed1`` or ``.../base``."""
    if folder.name.startswith("seed"):
        return folder.parent.name, int(folder.name[4:])
    return folder.name, None


def example_scores(rate: float, arm: str, seed: int | None, examples: int) -> np.ndarray:
    """0/1 exact match with about ``rate`` right, fixed for an (arm, seed)."""
    rng = np.random.default_rng(zlib.crc32(f"{arm}/{seed}".encode()))
    return (rng.random(examples) < rate).astype(float)


class FakeRuns:
    """Counts calls; ``rates`` gives each arm's exact-match rate (default 0.3); ``fail`` names
    arms whose training raises; ``prediction`` (arm, seed, example index) and ``reference``
    (example index) give the texts written to predictions.jsonl (default "P" and "R")."""

    def __init__(
        self,
        rates: dict[str, float] | None = None,
        fail: Callable[[str], bool] = lambda arm: False,
        examples: int = EXAMPLES,
        roscoe: bool = False,
        prediction: Callable[[str, int | None, int], str] = lambda arm, seed, index: "P",
        reference: Callable[[int], str] = lambda index: "R",
    ) -> None:
        self.rates = rates or {}
        self.fail = fail
        self.examples = examples
        self.roscoe = roscoe
        self.prediction = prediction
        self.reference = reference
        self.trained: list[Path] = []
        self.evaluated: list[Path] = []
        self.configs: list[EvalConfig] = []  # how each was evaluated

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeRuns:
        monkeypatch.setattr("seglm.train.train", self.train)
        monkeypatch.setattr("seglm.evaluate.evaluate", self.evaluate)
        return self

    def train(self, config: TrainConfig, progress: bool = True) -> None:
        folder = config.run_dir
        arm, _ = arm_of(folder)
        self.trained.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        record_files(
            folder, "config.yaml", "log.jsonl", "adapter_model.safetensors", "train_report.json"
        )
        # As seglm.train writes it: how this call treated the folder is not part of the run.
        write_config(
            dataclasses.replace(config, overwrite=False, resume=False), folder / "config.yaml"
        )
        if self.fail(arm):
            raise RuntimeError(f"training of {arm} diverged")
        weights = dict(part.split("=") for part in config.loss.split(","))
        events = []
        for step in range(1, 6):
            terms = {
                f"loss_{name}": 2.0 / step + COMPONENTS.index(name.split("@")[0])
                for name in weights
            }
            total = sum(float(w) * terms[f"loss_{n}"] for n, w in weights.items())
            events.append({"step": step, "epoch": step / 5, "loss": total, **terms})
        text = "".join(json.dumps(event) + "\n" for event in events)
        (folder / "log.jsonl").write_text(text)
        (folder / "adapter_model.safetensors").write_bytes(b"")  # the weights at the root
        report = {"global_step": 5, "wall_time_s": 1.5}
        (folder / "train_report.json").write_text(json.dumps(report))

    def evaluate(
        self, model_ref: Any, *, out_dir: Any, config: EvalConfig, progress: bool = True
    ) -> None:
        folder = Path(out_dir)
        arm, seed = arm_of(folder)
        self.evaluated.append(folder)
        self.configs.append(config)
        limit = config.limit or self.examples
        scores = example_scores(self.rates.get(arm, 0.3), arm, seed, limit)
        records = []
        for index, right in enumerate(scores):
            metrics: dict[str, Any] = {
                "exact_match": right,
                "iou": 0.5 * right + 0.25,
                "missing_steps": 0.5 - 0.4 * right,
                "extra_steps": 0.1,
                "repetitions": 0.0,
                "wrong_operators": 0.2 * (1 - right),
                "inverted_operands": 0.05,
            }
            if self.roscoe:
                metrics["faithfulness_step"] = 0.6 + 0.3 * right + 0.01 * (index % 5)
                metrics["info_chain"] = 0.7 - 0.01 * (index % 7)
            prediction = self.prediction(arm, seed, index)
            record = {"id": f"arith/test/{index}", "prompt": "Q", "prediction": prediction}
            records.append({**record, "reference": self.reference(index), "metrics": metrics})
        folder.mkdir(parents=True, exist_ok=True)
        record_files(folder, "predictions.jsonl", "eval_config.json", "metrics.json")
        text = "".join(json.dumps(record) + "\n" for record in records)
        (folder / "predictions.jsonl").write_text(text)
        settings = {
            "task": config.task,
            "task_options": config.task_options or {},
            "split": config.split,
            "dtype": config.dtype,
        }
        (folder / "eval_config.json").write_text(json.dumps(settings))
        means = {name: float(np.mean([r["metrics"][name] for r in records])) for name in metrics}
        summary = {"n": len(records), "metrics": means, "throughput": {"seconds": 0.5}}
        (folder / "metrics.json").write_text(json.dumps(summary))


def fake_jobs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arms: dict[str, str]) -> Path:
    """Processes started from now on (submitit's jobs, a grid's workers) train and evaluate with
    the stand-ins (tests/cluster_fakes/sitecustomize.py); returns the folder where each training
    attempt is logged."""
    state = tmp_path / "attempts"
    state.mkdir()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"state": str(state), "arms": arms}))
    monkeypatch.setenv("SEGLM_FAKE_PLAN", str(plan))
    paths = [str(FAKES), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    return state
