"""Time and peak memory of each loss's forward+backward against torch's cross_entropy.

Times come from one process per shape that runs the losses in interleaved rounds (median of the
rounds), so a busy machine slows all of them alike. Memory comes from a fresh subprocess per loss
and shape, so its peak RSS (ru_maxrss) is its own: extra bytes over the logits themselves, and in
units of one N x V float32 buffer (the gradient of the logits is one such buffer).
Targets follow Zipf's law (s = 1.1, token ids by rank), like token frequencies in text:
1367 to 1605 distinct classes in 4096 tokens (V = 32000 to 151936), pessimistic next to GSM8K
answers (440 distinct in 4096 SmolLM2 tokens). ``--targets uniform`` is the worst case for the
set losses (about N distinct classes).
Writes benchmarks/results/losses-<targets>.json.

    python benchmarks/losses.py                      # the full table
    python benchmarks/losses.py --sizes 512x32000    # one shape
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seglm.losses import (
    focal_loss,
    generalized_dice_loss,
    lovasz_softmax_loss,
    self_adjusting_dice_loss,
)

DEFAULT_SIZES = [f"{n}x{v}" for n in (512, 4096) for v in (32000, 49152, 151936)]
LOSSES = {
    "torch_cross_entropy": lambda x, y: F.cross_entropy(x, y),
    "focal": focal_loss,
    "sadl": self_adjusting_dice_loss,
    "gdice": generalized_dice_loss,
    "lovasz": lovasz_softmax_loss,
}
TARGETS = {"focal": 2.0, "sadl": 2.0, "gdice": 3.0, "lovasz": 3.0}


def per_class_loop_lovasz(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What the research code does (docs/method.md, "Known defects", item 3): a Python
    loop over every class of V, with a host sync per class to skip absent ones. Kept here only
    for contrast."""
    probs = logits.softmax(-1)
    losses = []
    for c in range(probs.shape[1]):
        foreground = (targets == c).float()
        if foreground.sum() == 0:
            continue
        errors = (foreground - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        fg_sorted = foreground[order]
        total = fg_sorted.sum()
        jaccard = 1 - (total - fg_sorted.cumsum(0)) / (total + (1 - fg_sorted).cumsum(0))
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def inputs(n: int, v: int, targets: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(n, v).requires_grad_()
    if targets == "uniform":
        return logits, torch.randint(0, v, (n,))
    ranks = np.random.default_rng(0).zipf(1.1, size=8 * n)
    return logits, torch.from_numpy(ranks[ranks <= v][:n] - 1)


def forward_backward(loss: str, logits: torch.Tensor, targets: torch.Tensor) -> float:
    fn = per_class_loop_lovasz if loss == "lovasz_per_class_loop" else LOSSES[loss]
    logits.grad = None
    start = time.perf_counter()
    fn(logits, targets).backward()
    return time.perf_counter() - start


def peak_memory(loss: str, n: int, v: int, targets_kind: str) -> dict[str, float]:
    """Runs in its own process: peak RSS growth of one forward+backward."""
    logits, targets = inputs(n, v, targets_kind)
    baseline = rss_bytes()
    forward_backward(loss, logits, targets)
    return {"extra_bytes": max(rss_bytes() - baseline, 0)}


def interleaved_times(
    losses: list[str], n: int, v: int, rounds: int, targets_kind: str
) -> dict[str, float]:
    """Runs in its own process: median time of each loss over interleaved rounds."""
    logits, targets = inputs(n, v, targets_kind)
    times: dict[str, list[float]] = {loss: [] for loss in losses}
    for round_index in range(rounds + 1):
        for loss in losses:
            elapsed = forward_backward(loss, logits, targets)
            if round_index:  # the first round warms up
                times[loss].append(elapsed)
    return {loss: statistics.median(values) for loss, values in times.items()}


def in_subprocess(*args: str) -> dict[str, float]:
    command = [sys.executable, __file__, *args]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def format_row(row: dict, ce_memory: float) -> str:
    target = TARGETS.get(row["loss"])
    verdict = ""
    if target:
        buffer = row["n"] * row["v"] * 4
        ok = row["time_vs_ce"] <= target and row["extra_bytes"] <= ce_memory + 2 * buffer
        verdict = f"≤{target:g}x CE, ≤ CE + 2 buffers: {'ok' if ok else 'MISSED'}"
    return (
        f"| {row['n']} | {row['v']} | {row['loss']} | {row['seconds'] * 1e3:.0f} | "
        f"{row['time_vs_ce']:.2f} | {row['extra_bytes'] / 2**20:.0f} | {row['buffers']:.2f} | "
        f"{verdict} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="*", default=DEFAULT_SIZES, help="NxV shapes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--targets", choices=["zipf", "uniform"], default="zipf")
    parser.add_argument("--loop-size", default="512x32000", help="shape for the per-class loop")
    parser.add_argument("--memory", nargs=2, metavar=("LOSS", "NxV"), help=argparse.SUPPRESS)
    parser.add_argument("--times", nargs="+", metavar="NxV LOSS", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="JSON output")
    args = parser.parse_args()
    if args.memory:
        n, v = map(int, args.memory[1].split("x"))
        print(json.dumps(peak_memory(args.memory[0], n, v, args.targets)))
        return
    if args.times:
        n, v = map(int, args.times[0].split("x"))
        print(json.dumps(interleaved_times(args.times[1:], n, v, args.rounds, args.targets)))
        return

    rows = []
    header = "| N | V | loss | ms fwd+bwd | x CE time | extra MiB | N×V buffers | target |"
    print(header + "\n|" + "---|" * 8)
    jobs = [(size, list(LOSSES), args.rounds) for size in args.sizes]
    jobs.append((args.loop_size, ["torch_cross_entropy", "lovasz_per_class_loop"], 1))
    for size, losses, rounds in jobs:
        n, v = map(int, size.split("x"))
        buffer = n * v * 4
        common = ("--targets", args.targets)
        times = in_subprocess(*common, "--rounds", str(rounds), "--times", size, *losses)
        ce_memory = in_subprocess(*common, "--memory", "torch_cross_entropy", size)["extra_bytes"]
        for loss in losses:
            memory = (
                ce_memory
                if loss == "torch_cross_entropy"
                else in_subprocess(*common, "--memory", loss, size)["extra_bytes"]
            )
            row = {
                "n": n,
                "v": v,
                "loss": loss,
                "targets": args.targets,
                "seconds": times[loss],
                "time_vs_ce": times[loss] / times["torch_cross_entropy"],
                "extra_bytes": memory,
                "buffers": memory / buffer,
            }
            rows.append(row)
            print(format_row(row, ce_memory), flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / f"losses-{args.targets}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
