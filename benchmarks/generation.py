"""Greedy generation throughput of ``seglm eval``: examples/s and generated tokens/s.

Runs the evaluation's own batching (prompts sorted by length, left padding, KV cache, stop at EOS
and at "\\nQuestion:") on the first N GSM8K test prompts (0-shot, the paper's prompt) with
SmolLM2-135M-Instruct, for each dtype and batch size, writing nothing but the results. Greedy
decoding makes every configuration generate the same tokens (up to dtype rounding), so the rates
compare. The machine's load average is recorded with them: on a shared machine it explains more
than the settings do. Prints a markdown table and writes benchmarks/results/generation.json.

    python benchmarks/generation.py                          # 32 prompts, batch 8/16/32, fp32+bf16
    python benchmarks/generation.py -n 16 --batch-sizes 16 --dtypes bf16 --threads 1

On a shared machine whose other processes keep the cores busy, one intra-op thread
(``--threads 1`` or ``OMP_NUM_THREADS=1``) is several times faster than two: threads that are
descheduled leave the others spinning at every barrier.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from seglm.evaluate import Scorer, build_requests, load_for_eval, run_batches
from seglm.tasks import get_task

RESULTS = Path(__file__).parent / "results" / "generation.json"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(args: argparse.Namespace, dtype: str) -> list[dict[str, Any]]:
    """One row per batch size for one dtype (the model is loaded once)."""
    loaded = load_for_eval(args.model, dtype=dtype)
    task = get_task("gsm8k")
    examples = task.load("test", data_dir=args.data_dir, limit=args.n)
    requests = build_requests(task, examples, loaded.tokenizer, "generate", [], 0, 0)
    scorer = Scorer(loaded, task, "generate", args.max_new_tokens or task.max_new_tokens)
    rows = []
    for batch_size in args.batch_sizes:
        load = os.getloadavg()[0]
        started = time.perf_counter()
        throughput = run_batches(requests, batch_size, scorer, lambda records: None)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "dtype": dtype,
                "batch_size": batch_size,
                "examples": throughput.examples,
                "generated_tokens": throughput.generated_tokens,
                "seconds": round(seconds, 2),
                "examples_per_s": round(throughput.examples / seconds, 4),
                "tokens_per_s": round(throughput.generated_tokens / seconds, 2),
                "load_average_1min": round(load, 2),
            }
        )
        print(markdown_row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| dtype | batch | examples/s | tokens/s | s/example | generated tokens | load avg |\n"
    "|---|---:|---:|---:|---:|---:|---:|"
)


def markdown_row(row: dict[str, Any]) -> str:
    per_example = row["seconds"] / row["examples"]
    return (
        f"| {row['dtype']} | {row['batch_size']} | {row['examples_per_s']:.3f} | "
        f"{row['tokens_per_s']:.1f} | {per_example:.2f} | {row['generated_tokens']} | "
        f"{row['load_average_1min']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("-n", type=int, default=32, help="GSM8K test prompts")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("SEGLM_DATA_DIR")
        or (str(SHARED_DATA) if SHARED_DATA.is_dir() else None),
        help="folder with gsm8k/test.jsonl (default $SEGLM_DATA_DIR or ../shared/data)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"{args.model}, {args.n} GSM8K test prompts, {torch.get_num_threads()} threads\n")
    print(HEADER, flush=True)
    rows = [row for dtype in args.dtypes for row in measure(args, dtype)]
    report = {
        "model": args.model,
        "prompts": args.n,
        "max_new_tokens": args.max_new_tokens or get_task("gsm8k").max_new_tokens,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "torch": torch.__version__,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
