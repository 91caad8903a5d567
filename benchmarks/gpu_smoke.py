"""A smoke test of seglm's whole GPU path on a small randomly initialised Llama (no download):
``seglm train`` a few steps with the fused head and LoRA on every linear layer and on ``lm_head``,
in bf16 and in fp16 (loss scaling); ``seglm eval`` of each run on a handful of arith problems;
with two or more GPUs, a 2-process ``torchrun`` evaluation and the refusal of a plain
``seglm train`` that sees several GPUs. Each step runs as a user runs it, as a subprocess of the
command line with a time limit; a failed step becomes a row with the tail of its output and the
next steps still run. ``benchmarks/gpu.py --parts smoke`` runs it (its rows go in that JSON).

The model folder is built here: ``seglm.models.char_tokenizer`` (one token per printable
character: nothing to download or carry) and a ``LlamaForCausalLM`` from a config whose
vocabulary is padded beyond the tokenizer's, as many models pad theirs, so that the fused head
works in several chunks of whole 128-row tiles. Without CUDA the same steps run at tiny sizes in
fp32 (fp16 needs CUDA), which is what ``tests/test_benchmarks_gpu.py`` runs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from seglm.models import char_tokenizer

LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class SmokeSizes:
    vocab: int  # the model's rows; the tokenizer has ~100
    hidden: int
    layers: int
    heads: int
    steps: int
    batch: int
    problems: int  # arith test problems each evaluation scores
    step_timeout_s: float


GPU_SIZES = SmokeSizes(65536, 512, 4, 8, 6, 8, 8, 240)  # 1024-row chunks, ~1200 rows a batch
CPU_SIZES = SmokeSizes(512, 64, 2, 4, 2, 2, 2, 300)
# One run per dtype, with the loss that exercises the other pass of the fused head: fp16 with
# the paper presets' CE + Lovasz (two passes), bf16 with CE + focal (one pass).
GPU_RUNS = {"bf16": "ce=0.6,focal=0.4", "fp16": "ce=0.6,lovasz=0.4"}
CPU_RUNS = {"fp32": "ce=0.6,lovasz=0.4"}


def save_model(folder: Path, sizes: SmokeSizes) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer()
    config = LlamaConfig(
        vocab_size=sizes.vocab,
        hidden_size=sizes.hidden,
        intermediate_size=4 * sizes.hidden,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.heads // 2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,  # the head has its own weight, as Llama 2's
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_config(model: Path, run: Path, dtype: str, loss: str, sizes: SmokeSizes) -> dict:
    return {
        "model": str(model),
        "task": "arith",
        "task_options": {"train_size": 8 * sizes.batch, "validation_size": 4, "test_size": 16},
        "max_length": 256,
        "eval_split": "none",
        "loss": loss,
        "dtype": dtype,
        "fused_loss": True,  # fail, not fall back, if the fused head cannot be used
        "target_modules": [*LORA_MODULES, "lm_head"],
        "max_steps": sizes.steps,
        "batch_size": sizes.batch,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_steps": sizes.steps,
        "output_dir": str(run),
    }


def command_row(
    name: str,
    command: list[str],
    env: dict[str, str],
    timeout_s: float,
    check: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Run one step; ``check`` reads what it wrote and says what is wrong (``problem``)."""
    row: dict[str, Any] = {"step": name, "command": " ".join(command[2:])}
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or b""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        row.update(status="error", note=f"timed out after {timeout_s:.0f} s", output=output[-3000:])
        return row
    row["seconds"] = round(time.monotonic() - started, 1)
    if done.returncode:
        tail = (done.stdout + done.stderr)[-3000:]
        row.update(status="error", note=f"exit {done.returncode}", output=tail)
        return row
    found = check()
    problem = found.pop("problem", None)
    row.update(found, status="error" if problem else "ok")
    if problem:
        row.update(note=problem, output=(done.stdout + done.stderr)[-3000:])
    return row


def trained(run: Path, dtype: str, steps: int) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        report = json.loads((run / "train_report.json").read_text())
        events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        losses = [e["loss"] for e in events if "loss" in e]
        found: dict[str, Any] = {
            "fused_loss": report["fused_loss"],
            "dtype": report["dtype"],
            "global_step": report["global_step"],
            "peak_gpu_mib": report.get("peak_gpu_mib"),
            "losses": losses,
            "grad_norms": [e["grad_norm"] for e in events if "grad_norm" in e],
        }
        if not report["fused_loss"] or report["dtype"] != dtype or report["global_step"] != steps:
            found["problem"] = "not the fused head, the dtype or the steps asked for"
        elif len(losses) != steps or not all(math.isfinite(loss) for loss in losses):
            found["problem"] = f"expected {steps} finite logged losses"
        return found

    return check


def evaluated(folder: Path, problems: int) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        metrics = json.loads((folder / "metrics.json").read_text())
        predictions = (folder / "predictions.jsonl").read_text().splitlines()
        found: dict[str, Any] = {"metrics": metrics, "predictions": len(predictions)}
        if len(predictions) != problems:
            found["problem"] = f"{len(predictions)} predictions for {problems} problems"
        return found

    return check


def refused(run: Path) -> dict[str, Any]:
    return {} if not run.exists() else {"problem": "it started a run folder"}


def smoke_rows(
    work: Path, cuda: bool, gpus: int, seconds_left: Callable[[], float | None]
) -> Iterator[dict[str, Any]]:
    """The smoke test's steps in ``work``, one row each; steps that would start after the time
    budget is spent are skipped."""
    sizes, runs = (GPU_SIZES, GPU_RUNS) if cuda else (CPU_SIZES, CPU_RUNS)
    seglm = [sys.executable, "-m", "seglm"]
    one_gpu = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    every_gpu = dict(one_gpu)
    if gpus > 1:  # the first visible GPU alone
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") or "0"
        one_gpu["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0]
    if work.exists():
        shutil.rmtree(work)
    model = save_model(work / "model", sizes)
    yield {"step": "model folder", "status": "ok", "vocab": sizes.vocab, "hidden": sizes.hidden}

    def timeout() -> float | None:
        left = seconds_left()
        return sizes.step_timeout_s if left is None else min(left, sizes.step_timeout_s)

    def run(
        name: str, command: list[str], env: dict[str, str], check: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        limit = timeout()
        if limit is not None and limit <= 0:
            return {"step": name, "status": "skipped", "note": "time budget spent"}
        return command_row(name, command, env, limit, check)

    for dtype, loss in runs.items():
        folder = work / f"run-{dtype}"
        config = work / f"{dtype}.yaml"
        config.write_text(yaml.safe_dump(train_config(model, folder, dtype, loss, sizes)))
        row = run(
            f"train {dtype} {loss}",
            [*seglm, "train", str(config), "--quiet"],
            one_gpu,
            trained(folder, dtype, sizes.steps),
        )
        yield row
        if row["status"] != "ok":
            continue
        evaluation = folder / "eval-1"
        eval_args = ["eval", str(folder), "--limit", str(sizes.problems), "--quiet"]
        eval_args += ["--dtype", dtype, "--max-new-tokens", "16", "--output-dir"]
        yield run(
            f"eval {dtype}",
            [*seglm, *eval_args, str(evaluation)],
            one_gpu,
            evaluated(evaluation, sizes.problems),
        )
        if gpus > 1:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            yield run(
                f"eval {dtype}, torchrun 2 processes",
                [*torchrun, "--nproc_per_node", "2", "-m", "seglm", *eval_args, f"{folder}-2"],
                every_gpu,
                evaluated(Path(f"{folder}-2"), sizes.problems),
            )
    if gpus > 1:
        folder = work / "refused"
        config = work / "refused.yaml"
        dtype, loss = next(iter(runs.items()))
        config.write_text(yaml.safe_dump(train_config(model, folder, dtype, loss, sizes)))
        row = run(
            "several GPUs, no launcher: refused",
            [*seglm, "train", str(config), "--quiet"],
            every_gpu,
            lambda: refused(folder),
        )
        # The refusal is an exit with a message naming the recipes, before any run folder.
        said = row.get("output", "")
        if row.get("note", "").startswith("exit") and "CUDA_VISIBLE_DEVICES=0" in said:
            row.update(status="ok", note="refused")
        elif row["status"] == "ok":
            row.update(status="error", note="it trained")
        yield row


def smoke_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| step | status | s | what it found |", "|---|---|---|---|"]
    for row in rows:
        keys = ("vocab", "hidden", "fused_loss", "dtype", "peak_gpu_mib")
        found = {k: row[k] for k in keys if row.get(k) is not None}
        if row.get("losses"):
            found["loss first/last"] = f"{row['losses'][0]:.3f}/{row['losses'][-1]:.3f}"
        if "metrics" in row:
            found["predictions"] = row["predictions"]
        what = ", ".join(f"{k} {v}" for k, v in found.items()) or row.get("note", "")
        lines.append(f"| {row['step']} | {row['status']} | {row.get('seconds', '-')} | {what} |")
    return "\n".join(lines)
