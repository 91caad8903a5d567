"""Time and peak memory of forward+backward: materialised logits vs the fused output layer + loss.

The materialised path is ``objective(F.linear(hidden, weight), labels)``; the fused path is
``fused_objective_loss(objective, hidden, weight, labels)``. Both start from the same hidden
states ``[N/1024, 1024, H]`` and a trained (or, with ``--frozen-head``, frozen) output weight
``[V, H]`` (float32, or ``--dtype bfloat16``), and run one backward into both. With
``--lora-head R`` the output layer is a frozen weight with a rank-R PEFT LoRA adapter (the
paper's Llama / StableLM setting): materialised through the PEFT layer's own forward, fused
through ``seglm.fused_head.FusedLoraHead``. The extra loss
``torch_ce`` compares the fused CE with plain ``F.cross_entropy`` on materialised float32
logits, the usual way of computing it. Each configuration runs in a fresh subprocess;
its memory is the peak RSS during forward and backward (Linux's ``VmHWM``, reset once the inputs
exist, so a higher peak while they were built does not hide it) minus the RSS then; it includes
the gradients of hidden and weight that both paths produce. Time is wall-clock and CPU time (the
latter is steadier on a shared machine).

Targets follow a Zipf law (s = 1.1) over a random permutation of the vocabulary, as text does;
each 1024-token sequence is one group of the set losses (the ``sequence`` default). A
materialised configuration whose memory, extrapolated from the same loss at the smallest N
measured, exceeds the memory available is not run and is reported as "does not fit".

    python benchmarks/fused.py                              # the full table (long on a CPU)
    python benchmarks/fused.py --shapes 2048x49152x576 --losses ce lovasz --append
    python benchmarks/fused.py --shapes 2048x49152x576 --losses ce lovasz --lora-head 8 --append
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seglm.fused_head import FusedLoraHead
from seglm.losses import Objective
from seglm.losses.fused import default_chunk_size, fused_objective_loss

LOSSES = ["torch_ce", "ce", "focal", "sadl", "gdice", "lovasz"]
DEFAULT_SHAPES = [
    f"{n}x{v}x{h}" for h in (576, 2048) for v in (49152, 151936) for n in (2048, 16384)
]
SEQUENCE_LENGTH = 1024
GIB = 2**30


def zipf_targets(n: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    draws = torch.multinomial(ranks.pow(-1.1), n, replacement=True, generator=generator)
    return torch.randperm(vocab, generator=generator)[draws]


def memory_status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``: the peak RSS) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Make the peak RSS the current RSS (Linux >= 4.0) and return it."""
    Path("/proc/self/clear_refs").write_text("5")
    return memory_status("VmRSS")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def lora_head(weight: torch.Tensor, rank: int, generator: torch.Generator) -> torch.nn.Module:
    """A PEFT LoRA layer around a frozen ``weight``, its B initialised away from zero."""
    from peft import LoraConfig, inject_adapter_in_model

    holder = torch.nn.Module()
    holder.head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    holder.head.weight = torch.nn.Parameter(weight, requires_grad=False)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["head"])
    layer = inject_adapter_in_model(config, holder).head
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.01, generator=generator)
    return layer


def run_one(
    path: str,
    loss: str,
    n: int,
    vocab: int,
    size: int,
    frozen: bool,
    dtype: torch.dtype,
    lora_rank: int = 0,
) -> dict:
    generator = torch.Generator().manual_seed(0)
    batch = max(1, n // SEQUENCE_LENGTH)
    length = n // batch
    hidden = torch.randn(batch, length, size, generator=generator, dtype=dtype)
    weight = torch.randn(vocab, size, generator=generator, dtype=dtype).mul_(3 / size**0.5)
    hidden.requires_grad_()
    weight.requires_grad_(not frozen and not lora_rank)
    labels = zipf_targets(batch * length, vocab, generator).reshape(batch, length)
    objective = Objective.from_spec("ce" if loss == "torch_ce" else loss)
    layer = lora_head(weight, lora_rank, generator) if lora_rank else None

    def forward_backward() -> None:
        if layer is not None:
            if path == "fused":
                fused = FusedLoraHead(layer, objective)
                with fused.computing_loss(labels):
                    loss_value = layer(hidden)
            else:
                loss_value = objective(layer(hidden), labels).loss
        elif path == "fused":
            loss_value = fused_objective_loss(objective, hidden, weight, labels).loss
        elif loss == "torch_ce":
            logits = F.linear(hidden, weight)[:, :-1].float()
            loss_value = F.cross_entropy(logits.reshape(-1, vocab), labels[:, 1:].reshape(-1))
        else:
            loss_value = objective(F.linear(hidden, weight), labels).loss
        loss_value.backward()

    baseline = reset_peak_rss()
    cpu, wall = cpu_seconds(), time.perf_counter()
    forward_backward()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    extra = max(memory_status("VmHWM") - baseline, 0)
    return {"seconds": wall, "cpu_seconds": cpu, "extra_bytes": extra}


def measure(path: str, loss: str, shape: str, frozen: bool, dtype: str, lora_rank: int) -> dict:
    command = [sys.executable, __file__, "--one", path, loss, shape, "--dtype", dtype]
    command += ["--frozen-head"] if frozen else []
    command += ["--lora-head", str(lora_rank)] if lora_rank else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def parse_shape(shape: str) -> tuple[int, int, int]:
    n, vocab, size = map(int, shape.split("x"))
    return n, vocab, size


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def row_key(row: dict) -> tuple:
    return (
        *(row[key] for key in ("n", "v", "h", "loss", "frozen_head", "dtype")),
        row.get("lora_rank", 0),
    )


def cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", nargs="*", default=DEFAULT_SHAPES, help="NxVxH shapes")
    parser.add_argument("--losses", nargs="*", default=LOSSES)
    parser.add_argument("--frozen-head", action="store_true", help="the weight gets no gradient")
    parser.add_argument(
        "--lora-head", type=int, default=0, metavar="R", help="a frozen head with rank-R LoRA"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--margin-gib", type=float, default=3.0, help="memory left free for the rest of the machine"
    )
    parser.add_argument("--one", nargs=3, metavar=("PATH", "LOSS", "NxVxH"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fused.json"))
    parser.add_argument(
        "--append", action="store_true", help="add to (or replace) the rows already in --out"
    )
    parser.add_argument(
        "--table", action="store_true", help="print the table of the rows in --out; run nothing"
    )
    args = parser.parse_args()
    if args.one:
        path, loss, shape = args.one
        dtype = getattr(torch, args.dtype)
        shape_values = parse_shape(shape)
        result = run_one(path, loss, *shape_values, args.frozen_head, dtype, args.lora_head)
        print(json.dumps(result))
        return

    out = Path(args.out)
    print(HEADER + "\n|" + "---|" * 11, flush=True)
    if args.table:
        rows = json.loads(out.read_text())
        for row in sorted(rows, key=table_order):
            print(table_row(estimate_needs(row, rows)))
        return
    kept = json.loads(out.read_text()) if args.append and out.exists() else []
    rows: list[dict] = []
    # Memory of the materialised path in units of one N x V float32 buffer, per (loss, V, H),
    # measured at the smallest N and used to tell whether a larger N fits; before any
    # measurement, at least the logits and their gradient.
    buffers: dict[tuple[str, int, int], float] = {}
    for shape in sorted(args.shapes, key=lambda shape: parse_shape(shape)[::-1]):
        n, vocab, size = parse_shape(shape)
        for loss in args.losses:
            unit = n * vocab * 4
            needed = buffers.get((loss, vocab, size), 2.0) * unit
            if needed > available_bytes() - args.margin_gib * GIB:
                materialised = {"does_not_fit": True, "needs_bytes": needed}
            else:
                materialised = measure(
                    "materialised", loss, shape, args.frozen_head, args.dtype, args.lora_head
                )
                buffers.setdefault((loss, vocab, size), materialised["extra_bytes"] / unit)
            fused = measure("fused", loss, shape, args.frozen_head, args.dtype, args.lora_head)
            row = {
                "n": n,
                "v": vocab,
                "h": size,
                "loss": loss,
                "frozen_head": args.frozen_head,
                "lora_rank": args.lora_head,
                "dtype": args.dtype,
                "chunk_size": default_chunk_size(vocab),
                "materialised": materialised,
                "fused": fused,
                "time_ratio": ratio(fused["seconds"], materialised.get("seconds")),
                "cpu_time_ratio": ratio(fused["cpu_seconds"], materialised.get("cpu_seconds")),
                "memory_ratio": ratio(materialised.get("extra_bytes"), fused["extra_bytes"]),
            }
            rows.append(row)
            print(table_row(row), flush=True)
            save(kept, rows, out)
    print(f"\nwrote {out}")


HEADER = (
    "| N | V | H | loss | head | materialised s (cpu s) | fused s (cpu s) | time ratio (cpu) "
    "| materialised GiB | fused GiB | memory ratio |"
)


def estimate_needs(row: dict, rows: list[dict]) -> dict:
    """A row that did not fit, with its memory extrapolated linearly in N from the smallest N
    measured for the same loss and V x H (rows may come from different runs)."""
    if not row["materialised"].get("does_not_fit"):
        return row
    same = [
        other
        for other in rows
        if "extra_bytes" in other["materialised"]
        and row_key(other)[1:] == row_key(row)[1:]
        and other["n"] < row["n"]
    ]
    if not same:
        return row
    smallest = min(same, key=lambda other: other["n"])
    needs = smallest["materialised"]["extra_bytes"] * row["n"] / smallest["n"]
    return {**row, "materialised": {"does_not_fit": True, "needs_bytes": needs}}


def table_order(row: dict) -> tuple:
    return (
        row["h"],
        row["v"],
        row["n"],
        row["frozen_head"],
        row.get("lora_rank", 0),
        LOSSES.index(row["loss"]),
    )


def table_row(row: dict) -> str:
    materialised, fused = row["materialised"], row["fused"]
    memory_ratio = f"{cell(row['memory_ratio'], 1)}x"
    head = "frozen" if row["frozen_head"] else "trained"
    if row.get("lora_rank"):
        head = f"LoRA r{row['lora_rank']}"
    if materialised.get("does_not_fit"):
        mat_time = "does not fit"
        mat_memory = f"needs ~{materialised['needs_bytes'] / GIB:.1f}"
        memory_ratio = f"~{materialised['needs_bytes'] / fused['extra_bytes']:.0f}x (est.)"
    else:
        mat_time = f"{materialised['seconds']:.2f} ({materialised['cpu_seconds']:.1f})"
        mat_memory = f"{materialised['extra_bytes'] / GIB:.2f}"
    return (
        f"| {row['n']} | {row['v']} | {row['h']} | {row['loss']} "
        f"| {head} | {mat_time} "
        f"| {fused['seconds']:.2f} ({fused['cpu_seconds']:.1f}) "
        f"| {cell(row['time_ratio'])} ({cell(row['cpu_time_ratio'])}) | {mat_memory} "
        f"| {fused['extra_bytes'] / GIB:.2f} | {memory_ratio} |"
    )


def save(kept: list[dict], rows: list[dict], out: Path) -> None:
    """Rows measured so far, after the kept rows they do not replace (written after each row,
    so a failure keeps what was measured)."""
    measured = {row_key(row) for row in rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = [row for row in kept if row_key(row) not in measured] + rows
    out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
