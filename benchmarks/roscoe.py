"""ROSCOE scoring throughput: GSM8K reference solutions scored against their questions.

Each setting gets a fresh scorer (empty caches), so a row's time is model loading plus scoring
from scratch. The embedding families run on the offline all-MiniLM-L6-v2, perplexity on
SmolLM2-135M-Instruct; the NLI and grammar families need hub models and are skipped offline (the
row says so). The machine's load average is recorded: on a shared machine it moves the numbers,
and fewer torch threads (--threads 1) can be faster than the default when other processes compete
for the cores.
Writes benchmarks/results/roscoe.json.

    python benchmarks/roscoe.py                 # 200 examples, every setting
    python benchmarks/roscoe.py --n 50 --settings embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from seglm.metrics.roscoe import SCORE_NAMES, RoscoeConfig, RoscoeScorer, split_steps

GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")
RESULTS = Path(__file__).parent / "results" / "roscoe.json"
SETTINGS = {
    "embeddings": RoscoeConfig(
        families=("semantic_alignment", "semantic_similarity"), sentence_model="all-MiniLM-L6-v2"
    ),
    "perplexity": RoscoeConfig(
        families=("language_coherence",), perplexity_model="smollm2-135m-instruct"
    ),
    "all (defaults)": RoscoeConfig(),
}


def load_examples(path: Path, n: int) -> list[dict[str, str]]:
    with path.open() as lines:
        rows = [json.loads(line) for line, _ in zip(lines, range(n), strict=False)]
    return [{"source": row["question"], "hypothesis": row["answer"]} for row in rows]


def run_setting(name: str, config: RoscoeConfig, examples: list[dict[str, str]]) -> dict:
    load_average = os.getloadavg()[0]
    start = time.perf_counter()
    scorer = RoscoeScorer(config)
    loaded = time.perf_counter()
    result = scorer.score(examples)
    scored = time.perf_counter()
    means = {}
    for score in SCORE_NAMES:
        values = [row[score] for row in result.scores if row[score] is not None]
        if values:
            means[score] = sum(values) / len(values)
    return {
        "setting": name,
        "examples": len(examples),
        "load_s": loaded - start,
        "score_s": scored - loaded,
        "examples_per_s": len(examples) / (scored - loaded),
        "load_average_1min": load_average,
        "models": result.models,
        "skipped_scores": [name for skipped in result.skipped for name in skipped.scores],
        "skipped": [skipped.message for skipped in result.skipped],
        "means": means,
    }


def render(rows: list[dict], steps: int, console: Console) -> None:
    title = f"ROSCOE throughput: GSM8K test references, {steps} steps in all"
    table = Table(title=f"{title}, {torch.get_num_threads()} torch threads")
    for column in ("setting", "models", "load s", "score s", "examples/s", "load avg", "skipped"):
        numeric = column not in ("setting", "models", "skipped")
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        models = ", ".join(f"{role}={name}" for role, name in row["models"].items())
        skipped = ", ".join(row["skipped_scores"]) or "-"
        table.add_row(
            row["setting"],
            models,
            f"{row['load_s']:.1f}",
            f"{row['score_s']:.1f}",
            f"{row['examples_per_s']:.2f}",
            f"{row['load_average_1min']:.1f}",
            skipped,
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="examples (GSM8K test, from the top)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--data", type=Path, default=GSM8K_TEST)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    examples = load_examples(args.data, args.n)
    steps = sum(len(split_steps(example["hypothesis"])) for example in examples)
    rows = [run_setting(name, SETTINGS[name], examples) for name in args.settings]
    console = Console(width=max(Console().width, 150))
    render(rows, steps, console)
    for row in rows:
        means = ", ".join(f"{score}={value:.3f}" for score, value in row["means"].items())
        console.print(f"{row['setting']} means: {means}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "examples": len(examples),
        "steps": steps,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
