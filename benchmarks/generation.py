"""Greedy generation of ``seglm eval`` against a plain ``model.generate``, side by side.

For each dtype and batch size, the same prompts (0-shot, the task's prompt; longest first, as
``seglm eval`` orders them) go through, batch by batch and interleaved, in several rounds (the
median round's time counts):

- ``seglm``: the evaluation's own scorer (left padding, KV cache, stop at EOS and at the task's
  stop strings, decoding, answer extraction and per-example metrics);
- ``floor``: ``model.generate`` on the same left-padded batch with the same greedy settings, EOS
  and ``max_new_tokens`` but no stop strings, then ``batch_decode``;
- ``floor-static``: the floor with ``cache_implementation="static"`` (a preallocated KV cache),
  where the transformers version offers it.

Greedy decoding makes every row generate the same tokens up to the stop strings (the floor goes on
until EOS or the limit), so compare examples/s (what a user waits for) and generated tokens/s
(the cost per token). Prints a markdown table and writes benchmarks/results/generation.json.

    python benchmarks/generation.py                               # arith, 64 prompts, auto dtype
    python benchmarks/generation.py --task gsm8k -n 32 --batch-sizes 8 32 --dtypes fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from seglm.evaluate import Request, Scorer, build_requests, load_for_eval
from seglm.models import resolve_dtype
from seglm.tasks import get_task

RESULTS = Path(__file__).parent / "results" / "generation.json"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET = 0.9  # seglm's examples/s at least this share of the floor's


class PlainGenerate:
    """``model.generate`` on a left-padded batch and nothing else: the floor."""

    def __init__(self, scorer: Scorer, cache: str | None) -> None:
        self.scorer, self.cache = scorer, cache

    def __call__(self, batch: Sequence[Request]) -> int:
        scorer = self.scorer
        inputs = scorer.inputs([request.prompt_ids for request in batch])
        extra = {"cache_implementation": self.cache} if self.cache else {}
        with torch.inference_mode():
            output = scorer.model.generate(
                **inputs, generation_config=scorer.generation_config, **extra
            )
        new = output[:, inputs["input_ids"].shape[1] :]
        scorer.tokenizer.batch_decode(new, skip_special_tokens=True)
        ends = torch.isin(new, torch.tensor(sorted(scorer.end_ids), device=new.device))
        # Tokens up to and including the first end token (or all of them).
        first_end = torch.where(ends.any(1), ends.int().argmax(1) + 1, new.shape[1])
        return int(first_end.sum())


def timed(work: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = work()
    return time.perf_counter() - started, tokens


def measure(args: argparse.Namespace, dtype: str) -> list[dict[str, Any]]:
    """One row per (batch size, path) for one dtype (the model is loaded once)."""
    loaded = load_for_eval(args.model, dtype=dtype)
    task = get_task(args.task)
    examples = task.load("test", data_dir=args.data_dir, limit=args.n)
    requests = build_requests(task, examples, loaded.tokenizer, "generate", [], 0, 0)
    requests.sort(key=lambda request: request.length, reverse=True)
    scorer = Scorer(loaded, task, "generate", args.max_new_tokens or task.max_new_tokens)
    paths: dict[str, Callable[[Sequence[Request]], int]] = {
        "seglm": lambda batch: scorer(batch, len(batch))[1],
        "floor": PlainGenerate(scorer, None),
    }
    if args.static_cache:
        paths["floor-static"] = PlainGenerate(scorer, "static")
    rows = []
    for batch_size in args.batch_sizes:
        batches = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
        for work in paths.values():  # warm-up: first calls allocate and build caches
            work(batches[-1])
        rounds: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):  # greedy: every round generates the same tokens
            spent = {name: 0.0 for name in paths}
            tokens = {name: 0 for name in paths}
            for batch in batches:
                for name, work in paths.items():
                    seconds_taken, generated = timed(lambda w=work, b=batch: w(b))
                    spent[name] += seconds_taken
                    tokens[name] += generated
            for name in paths:
                rounds[name].append(spent[name])
        seconds = {name: statistics.median(values) for name, values in rounds.items()}
        floor_rate = len(requests) / seconds["floor"]
        for name in paths:
            rate = len(requests) / seconds[name]
            rows.append(
                {
                    "dtype": resolve_dtype(dtype),
                    "batch_size": batch_size,
                    "path": name,
                    "examples": len(requests),
                    "generated_tokens": tokens[name],
                    "seconds": round(seconds[name], 2),
                    "examples_per_s": round(rate, 4),
                    "tokens_per_s": round(tokens[name] / seconds[name], 2),
                    "x_floor_examples_per_s": round(rate / floor_rate, 3),
                }
            )
            print(markdown_row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| dtype | batch | path | examples/s | x floor | generated tokens | tokens/s |\n"
    "|---|---:|---|---:|---:|---:|---:|"
)


def markdown_row(row: dict[str, Any]) -> str:
    return (
        f"| {row['dtype']} | {row['batch_size']} | {row['path']} | {row['examples_per_s']:.3f} | "
        f"{row['x_floor_examples_per_s']:.2f} | {row['generated_tokens']} | "
        f"{row['tokens_per_s']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="arith", help="arith (generated) or gsm8k (data dir)")
    parser.add_argument("-n", type=int, default=64, help="test prompts")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--dtypes", nargs="+", default=["auto"])
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--no-static-cache", dest="static_cache", action="store_false")
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

    load = os.getloadavg()
    print(f"{args.model}, {args.n} {args.task} test prompts, {torch.get_num_threads()} threads\n")
    print(HEADER, flush=True)
    rows = [row for dtype in args.dtypes for row in measure(args, dtype)]
    ratios = [row["x_floor_examples_per_s"] for row in rows if row["path"] == "seglm"]
    print(
        f"\nseglm / floor examples/s: median {statistics.median(ratios):.2f} "
        f"(target >= {TARGET}); load average {load} -> {os.getloadavg()}"
    )
    report = {
        "model": args.model,
        "task": args.task,
        "prompts": args.n,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average": [load, os.getloadavg()],
        },
        "torch": torch.__version__,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
