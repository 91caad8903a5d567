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
"""

from __future__ import annotations

import argparse
import contextlib
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
