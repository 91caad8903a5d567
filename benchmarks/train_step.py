"""Seconds per LoRA training step and peak memory, CE alone against CE + each loss.

One step is forward, objective, backward and AdamW update of SmolLM2-135M-Instruct with LoRA
(r=8 on every linear layer, seglm's default), a batch of 4 x 256 random tokens whose last 64
positions per row are the answer (uniform random targets: the worst case for the set losses,
which cost more with more distinct classes).

Time: one process per dtype runs the objectives in interleaved rounds (median over rounds), so a
busy machine slows all of them alike. Inside each step the objective's own forward and backward
(down to the logits' gradient) are timed apart from the model's, so its added cost is measured
without the model's noise: "added" is (objective time - CE's objective time) / CE's whole step.
Memory: a fresh process per objective and dtype, started before the timing process loads
anything (a child's ru_maxrss starts from its parent's RSS at fork), reports its peak RSS.
Prints a markdown table and writes benchmarks/results/train_step.json.

    python benchmarks/train_step.py                   # fp32 and bf16 autocast, every loss
    python benchmarks/train_step.py --dtypes bf16 --rounds 3 --threads 1

``--floor``: ``seglm train``'s whole step (Trainer, fused head, data loader, logging) against a
minimal loop of its own (forward, the loss on materialised logits, backward, clipping, AdamW) on
the same batches (each batch the Trainer just trained on), with the same model, LoRA, dtype and
threads, interleaved step by step in one process; ratio = median of the per-step ratios.
``--compare``: ``seglm train``'s whole step for each of ``--specs``, in interleaved rounds (each
round trains every spec for ``--steps`` steps, in a new order each round), the median step after
the first of each session, and each spec's ratio to the first spec's: what a loss costs in a real
step (ASFT's extra reference forward against DFT, say).
``--contention``: the same seglm step in fresh processes with 1 and 2 threads, idle OpenMP
threads spinning or sleeping (OMP_WAIT_POLICY), on the idle machine and next to one CPU-bound
process; the slowdown is against the fastest idle setting.

    python benchmarks/train_step.py --floor --preset demo --specs ce "ce=0.6,lovasz=0.4"
    python benchmarks/train_step.py --contention --preset demo --steps 6
    python benchmarks/train_step.py --compare --specs dft@answer=1 asft@answer=1 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from seglm.adapters import add_adapter, load_base_model
from seglm.config import TrainConfig
from seglm.losses import Objective

SPECS = {
    "ce": "ce",
    "focal": "ce=0.6,focal=0.4",
    "sadl": "ce=0.6,sadl=0.4",
    "gdice": "ce=0.6,gdice=0.4",
    "lovasz": "ce=0.6,lovasz=0.4",
}
RESULTS = Path(__file__).parent / "results" / "train_step.json"
FLOOR_RESULTS = RESULTS.with_name("train_step_floor.json")
COMPARE_RESULTS = RESULTS.with_name("train_step_compare.json")
CONTENTION_RESULTS = RESULTS.with_name("train_step_contention.json")
FLOOR_TARGET = 1.10  # seglm's step at most this many times the floor's


@dataclass
class StepTime:
    total: float
    objective: float  # the objective's forward and backward to the logits


class Step:
    """A LoRA model, its optimiser and one fixed batch."""

    def __init__(self, model_name: str, dtype: str, batch: int, length: int, answer: int) -> None:
        config = TrainConfig(model=model_name, adapter="lora", dtype=dtype)
        torch.manual_seed(0)
        self.model = add_adapter(load_base_model(config), config)
        self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.01)
        vocab = self.model.config.vocab_size
        self.input_ids = torch.randint(0, vocab, (batch, length))
        self.answer_mask = torch.zeros(batch, length, dtype=torch.long)
        self.answer_mask[:, length - answer :] = 1
        self.bf16 = dtype == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        return (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        )

    def __call__(self, objective: Objective) -> StepTime:
        started = time.perf_counter()
        with self.autocast():
            logits = self.model(input_ids=self.input_ids).logits
        # The objective on a leaf copy of the logits, so its share of the step can be timed.
        leaf = logits.detach().requires_grad_()
        objective_started = time.perf_counter()
        with self.autocast():
            loss = objective(leaf, self.input_ids, self.answer_mask).loss
        loss.backward()
        objective_time = time.perf_counter() - objective_started
        logits.backward(leaf.grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepTime(time.perf_counter() - started, objective_time)


def time_objectives(args: argparse.Namespace, dtype: str) -> dict[str, StepTime]:
    """Median step and objective times of each objective, in interleaved rounds after a warm-up."""
    step = Step(args.model, dtype, args.batch, args.length, args.answer)
    objectives = {name: Objective.from_spec(spec) for name, spec in SPECS.items()}
    for objective in objectives.values():
        step(objective)
    times: dict[str, list[StepTime]] = {name: [] for name in objectives}
    for _ in range(args.rounds):
        for name, objective in objectives.items():
            times[name].append(step(objective))
    return {
        name: StepTime(
            statistics.median(t.total for t in values),
            statistics.median(t.objective for t in values),
        )
        for name, values in times.items()
    }


def peak_rss_mib(args: argparse.Namespace, name: str, dtype: str) -> float:
    """Peak RSS of a fresh process that takes two steps with one objective."""
    command = [sys.executable, __file__, "--memory-of", name, "--dtypes", dtype]
    command += ["--model", args.model, "--batch", str(args.batch), "--length", str(args.length)]
    command += ["--answer", str(args.answer), "--threads", str(torch.get_num_threads())]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(output.strip().splitlines()[-1])


def measure_memory(args: argparse.Namespace) -> None:
    step = Step(args.model, args.dtypes, args.batch, args.length, args.answer)
    objective = Objective.from_spec(SPECS[args.memory_of])
    for _ in range(2):
        step(objective)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| objective | dtype | s/step | objective fwd+bwd (s) | added to a CE step | "
        "peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {SPECS[row['loss']]} | {row['dtype']} | {row['seconds']:.2f} | "
            f"{row['objective_seconds']:.3f} | {row['added']:+.1%} | {row['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


class Floor:
    """A minimal LoRA training loop of our own: the reference for ``seglm train``'s step."""

    def __init__(self, config: TrainConfig) -> None:
        from seglm.models import resolve_dtype

        torch.manual_seed(config.seed)
        self.model = add_adapter(load_base_model(config), config)
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.bf16 = resolve_dtype(config.dtype) == "bf16"
        self.objective = Objective.from_spec(config.loss)

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        started = time.perf_counter()
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        )
        with autocast:
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        if self.objective.weights == {"ce": 1.0}:
            shifted = batch["labels"][:, 1:].flatten()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), shifted)
        else:
            loss = self.objective(logits, batch["labels"], batch.get("answer_mask")).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started


def seglm_step_times(
    config: TrainConfig, floor: Floor | None = None
) -> tuple[list[float], list[float]]:
    """``seglm train``'s step times (from one step's end to the next's, the floor's own work
    left out), and the floor's time on each batch right after seglm trained on it."""
    import tempfile

    from transformers import TrainerCallback

    from seglm.train import train
    from seglm.trainer import SegLMTrainer

    last: dict[str, Any] = {}

    class RecordingTrainer(SegLMTrainer):
        def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            last["batch"] = inputs
            return super().training_step(model, inputs, *args, **kwargs)

    class Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.mark: float | None = None
            self.seglm: list[float] = []
            self.floor: list[float] = []

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.mark = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            assert self.mark is not None
            self.seglm.append(time.perf_counter() - self.mark)
            if floor is not None:
                self.floor.append(floor(last["batch"]))
            self.mark = time.perf_counter()

    timing = Interleave()
    with tempfile.TemporaryDirectory() as folder, _trainer_class(RecordingTrainer):
        run = dataclasses.replace(config, output_dir=folder, save_total_limit=1)
        train(run, callbacks=[timing], progress=False)
    return timing.seglm, timing.floor


@contextlib.contextmanager
def _trainer_class(cls: type) -> Any:
    import seglm.trainer

    original = seglm.trainer.SegLMTrainer
    seglm.trainer.SegLMTrainer = cls  # train() looks it up when it runs
    try:
        yield
    finally:
        seglm.trainer.SegLMTrainer = original


def floor_config(args: argparse.Namespace, spec: str) -> TrainConfig:
    from seglm.config import resolve_config

    overrides: dict[str, Any] = {"preset": args.preset, "loss": spec, "max_steps": args.steps}
    if args.floor_dtype:
        overrides["dtype"] = args.floor_dtype
    for item in args.set or ():
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return resolve_config(overrides=overrides)


def measure_floor(args: argparse.Namespace) -> None:
    from seglm.models import resolve_dtype

    rows = []
    for spec in args.specs:
        config = floor_config(args, spec)
        seglm, floor = seglm_step_times(config, Floor(config))
        # The first step of each warms up (allocations, lazy initialisation).
        ratios = [a / b for a, b in zip(seglm[1:], floor[1:], strict=True)]
        rows.append(
            {
                "spec": spec,
                "dtype": resolve_dtype(config.dtype),
                "threads": torch.get_num_threads(),
                "steps": len(ratios),
                "seglm_s": statistics.median(seglm[1:]),
                "floor_s": statistics.median(floor[1:]),
                "ratio": statistics.median(ratios),
                "seglm_all": [round(t, 2) for t in seglm],
                "floor_all": [round(t, 2) for t in floor],
            }
        )
    lines = [
        f"| loss | dtype | threads | seglm train s/step | floor s/step | ratio | "
        f"<= {FLOOR_TARGET:.2f}x |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "yes" if row["ratio"] <= FLOOR_TARGET else "no"
        lines.append(
            f"| {row['spec']} | {row['dtype']} | {row['threads']} | {row['seglm_s']:.2f} | "
            f"{row['floor_s']:.2f} | {row['ratio']:.2f} | {met} |"
        )
    print(f"preset {args.preset}, load average {os.getloadavg()}")
    print("\n".join(lines))
    FLOOR_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    FLOOR_RESULTS.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")


def measure_compare(args: argparse.Namespace) -> None:
    """seglm train's step for each spec, rounds interleaved so that a busy machine slows all
    alike; the ratio is of medians over every measured step."""
    steps: dict[str, list[float]] = {spec: [] for spec in args.specs}
    for round_number in range(args.rounds):
        order = (
            args.specs[round_number % len(args.specs) :]
            + args.specs[: round_number % len(args.specs)]
        )
        for spec in order:
            seglm, _ = seglm_step_times(floor_config(args, spec))
            steps[spec] += seglm[1:]  # the first step of a session warms up
    first = statistics.median(steps[args.specs[0]])
    lines = ["| loss | steps | s/step (median) | x first |", "|---|---|---|---|"]
    for spec, times in steps.items():
        median = statistics.median(times)
        lines.append(f"| {spec} | {len(times)} | {median:.2f} | {median / first:.2f} |")
    print(f"preset {args.preset}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    print("\n".join(lines))
    COMPARE_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": vars(args), "steps": steps}
    COMPARE_RESULTS.write_text(json.dumps(payload, indent=2) + "\n")


def measure_contention(args: argparse.Namespace) -> None:
    """Each setting in a fresh process (the OpenMP runtime reads its settings once)."""
    settings = [(t, w) for t in (1, 2) for w in ("spin", "PASSIVE")]
    rows = []
    for busy in (False, True):
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads, wait in settings:
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                env.pop("OMP_WAIT_POLICY", None)
                if wait != "spin":
                    env["OMP_WAIT_POLICY"] = wait
                command = [sys.executable, __file__, "--step-of", args.preset]
                command += ["--steps", str(args.steps), "--specs", args.specs[0]]
                output = subprocess.run(
                    command, env=env, capture_output=True, text=True, check=True
                ).stdout
                seconds = float(output.strip().splitlines()[-1])
                rows.append({"busy": busy, "threads": threads, "wait": wait, "seconds": seconds})
                print(rows[-1], flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
    fastest = min(row["seconds"] for row in rows if not row["busy"])
    lines = [
        "| machine | threads | idle threads | s/step | x fastest idle |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        machine = "one other CPU-bound process" if row["busy"] else "idle"
        lines.append(
            f"| {machine} | {row['threads']} | {'spin' if row['wait'] == 'spin' else 'sleep'} | "
            f"{row['seconds']:.2f} | {row['seconds'] / fastest:.2f} |"
        )
    print("\n".join(lines))
    CONTENTION_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    CONTENTION_RESULTS.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


def time_one_setting(args: argparse.Namespace) -> None:
    """The median seglm step of this process's settings (for --contention)."""
    seglm, _ = seglm_step_times(floor_config(args, args.specs[0]))
    print(statistics.median(seglm[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--answer", type=int, default=64, help="answer tokens per row")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory-of", choices=SPECS, help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help="seglm train against a plain loop")
    parser.add_argument("--contention", action="store_true", help="idle and busy machine")
    parser.add_argument("--compare", action="store_true", help="seglm train's step per spec")
    parser.add_argument("--preset", default="demo", help="--floor/--contention: the training")
    parser.add_argument("--specs", nargs="+", default=["ce", "ce=0.6,lovasz=0.4"])
    parser.add_argument("--steps", type=int, default=8, help="--floor/--contention: steps")
    parser.add_argument("--floor-dtype", help="--floor: dtype (default: the preset's)")
    parser.add_argument("--set", action="append", help="--floor: a training field KEY=VALUE")
    parser.add_argument("--step-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.step_of:
        args.preset = args.step_of
        time_one_setting(args)
        return
    if args.floor:
        measure_floor(args)
        return
    if args.contention:
        measure_contention(args)
        return
    if args.compare:
        measure_compare(args)
        return
    if args.memory_of:
        measure_memory(args)
        return
    dtypes = args.dtypes.split(",")
    memory = {(name, d): peak_rss_mib(args, name, d) for d in dtypes for name in SPECS}
    load_before = os.getloadavg()
    rows = []
    for dtype in dtypes:
        times = time_objectives(args, dtype)
        for name, measured in times.items():
            rows.append(
                {
                    "loss": name,
                    "dtype": dtype,
                    "seconds": measured.total,
                    "objective_seconds": measured.objective,
                    "added": (measured.objective - times["ce"].objective) / times["ce"].total,
                    "peak_rss_mib": memory[name, dtype],
                }
            )
    load = {"before_timing": load_before, "after": os.getloadavg()}
    print(f"torch threads: {torch.get_num_threads()}, load average (1, 5, 15 min): {load}")
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    settings = {**vars(args), "threads": torch.get_num_threads(), "load": load}
    RESULTS.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
