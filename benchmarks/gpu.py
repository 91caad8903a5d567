"""seglm's fused output layer + loss against Liger-Kernel, Cut Cross-Entropy and TRL on a GPU,
and a LoRA training step of a model of Llama-3.2-1B's shape.

On this workplace's GPU machine, one call of about 8 minutes runs it with the smoke test of
seglm's GPU path first (``--parts smoke``, benchmarks/gpu_smoke.py), after carrying the wheels
that machine lacks (README.md, "Measuring on a GPU"; benchmarks/gpu_device.sh says how):

    bash benchmarks/gpu_device.sh        # device tool: carry [".whl"], timeout_s 480; writes $OUT

Elsewhere:

    python benchmarks/gpu.py                       # CUDA: the full grid below; no CUDA: --small
    python benchmarks/gpu.py --small               # CPU sizes: seconds (what the test runs)
    python benchmarks/gpu.py --parts head --shapes 16384x151936x4096 --out /tmp/one.json
    python benchmarks/gpu.py --parts smoke         # seglm train and eval end to end (minutes)

**Output layer + loss** (``--parts head``): forward and backward from hidden states and a trained
output weight ``[V, H]`` (bf16 on CUDA) at N = 16384 tokens (16 sequences of 1024, Zipf targets as
in benchmarks/fused.py), H = 2048 and 4096, V = 128256 (Llama 3) and 151936 (Qwen 2.5), each row
side by side in one process: seglm fused (``fused_objective_loss``) and seglm materialised
(the ``Objective`` on ``F.linear`` logits) for CE and for ``ce=0.6,<loss>=0.4`` with every other
loss in ``seglm.losses.LOSS_NAMES`` at run time; Liger-Kernel's fused linear cross-entropy, Cut
Cross-Entropy and TRL's chunked log-probabilities (``trl.kernels.ChunkedLogProbFunction``, behind
TRL's SFTTrainer loss) for CE, on the same shifted rows. Time: CUDA events, median of 10 calls
after 2 warm-up calls; memory: ``torch.cuda.max_memory_allocated`` over one call
minus what was allocated before it (the inputs), so it includes the gradients each call returns.
Each row records its loss and the norm of its input gradients, which must agree across rows of
the same loss. A row that runs out of memory is recorded as OOM; a library that is missing (or
needs CUDA) gives a skipped row that says why.

**LoRA step** (``--parts train``): a randomly initialised ``LlamaForCausalLM`` with Llama-3.2-1B's
configuration (no download), bf16 base weights, LoRA as ``seglm train`` adds it
(``seglm.adapters.add_adapter``: r = 8 on every linear layer), batch 8 x 512 Zipf tokens whose last
128 per row are the answer, AdamW; per objective with the fused head (``install_fused_head``, what
``SegLMTrainer`` installs) and with materialised logits. Tokens/s from the median of 10 steps after
3 warm-up steps; peak memory of a step, in total and above what was allocated before it. Each
row starts from the same adapter weights and seed, so its first-step loss is comparable across
rows.

Targets (issue 17), reported as met/missed per shape: fused CE within 1.2x Liger's time and within
1.5x CCE's memory; per-token losses (focal, SADL, ...) within 1.2x fused CE's time; GDice and
Lovász within 2x. Prints markdown tables and writes JSON (default benchmarks/results/gpu.json).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from fused import zipf_targets  # benchmarks/fused.py
from gpu_smoke import smoke_rows, smoke_table  # benchmarks/gpu_smoke.py
from torch import Tensor

from seglm.adapters import add_adapter, base_dtype
from seglm.config import TrainConfig
from seglm.fused_head import FusedObjectiveHead, install_fused_head, remove_fused_head
from seglm.losses import LOSS_NAMES, Objective
from seglm.losses.fused import _sums_half_products_in_float32, fused_objective_loss
from seglm.losses.registry import get_term
from seglm.losses.spec import LossSpec
from seglm.models import free_memory, parse_dtype

GIB = 2**30
FUSED, MATERIALISED = "seglm fused", "seglm materialised"
LIGER, CCE, TRL = "Liger FLCE", "CCE", "TRL chunked"
# Issue 17's targets: the largest ratio of a fused row's time (or memory) to its reference's.
PER_TOKEN_LIMIT, SET_LIMIT = 1.2, 2.0
CE_TIME_LIMIT, CE_MEMORY_LIMIT = 1.2, 1.5
EXTRAS_HINT = "pip install 'seglm[gpu-bench]' (or carry the wheels, README.md)"

# Llama-3.2-1B's config.json, the fields that shape the computation.
LLAMA_3_2_1B: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
}
TINY_LLAMA = {
    **LLAMA_3_2_1B,
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


@dataclass(frozen=True)
class Sizes:
    shapes: tuple[str, ...]  # NxVxH, as benchmarks/fused.py writes them
    sequence_length: int  # tokens per sequence (one group of the set losses)
    model: dict[str, Any]  # LlamaConfig arguments
    model_name: str
    batch: int
    length: int
    answer: int  # answer tokens at the end of each row
    warmup: int
    repeats: int
    step_warmup: int
    step_repeats: int


# Repeats sized for ~5 minutes on an H200 (a call there takes 0.05-0.5 s).
FULL = Sizes(
    shapes=tuple(f"16384x{v}x{h}" for h in (2048, 4096) for v in (128256, 151936)),
    sequence_length=1024,
    model=LLAMA_3_2_1B,
    model_name="Llama-3.2-1B shape, random",
    batch=8,
    length=512,
    answer=128,
    warmup=2,
    repeats=10,
    step_warmup=3,
    step_repeats=10,
)
SMALL = Sizes(
    shapes=("256x1024x64", "256x512x32"),
    sequence_length=128,
    model=TINY_LLAMA,
    model_name="tiny Llama (2 layers, hidden 64), random",
    batch=2,
    length=64,
    answer=16,
    warmup=1,
    repeats=2,
    step_warmup=1,
    step_repeats=2,
)


def parse_shape(shape: str) -> tuple[int, int, int]:
    try:
        n, vocab, size = map(int, shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shapes: {shape!r} is not NxVxH (e.g. 16384x151936x4096)") from None
    return n, vocab, size


def objective_specs() -> list[str]:
    """CE, then the paper's mix with every other loss seglm has (read at run time)."""
    return ["ce"] + [f"ce=0.6,{name}=0.4" for name in LOSS_NAMES if name != "ce"]


class Clock:
    """Seconds and peak memory of one call: CUDA events and allocator statistics on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def seconds(self, run: Callable[[], object]) -> float:
        if not self.cuda:
            started = time.perf_counter()
            run()
            return time.perf_counter() - started
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def peak_bytes(self, run: Callable[[], object]) -> tuple[int | None, int | None]:
        """Peak allocated bytes during ``run`` above those allocated before it, and in total
        (None on a CPU: the peak RSS of a process cannot be reset between rows)."""
        if not self.cuda:
            run()
            return None, None
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak - before, peak


def measure(
    run: Callable[[], Tensor],
    reset: Callable[[], None],
    check: Callable[[Tensor], dict[str, float]],
    clock: Clock,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """``check`` of the first call's output; peak memory of a call after the warm-up; the median
    time of ``repeats`` further calls. ``reset`` runs before each call, untimed."""
    reset()
    result = check(run())
    for _ in range(warmup - 1):
        reset()
        run()
    reset()
    extra, total = clock.peak_bytes(run)
    seconds = []
    for _ in range(repeats):
        reset()
        seconds.append(clock.seconds(run))
    return {
        **result,
        "ms": statistics.median(seconds) * 1e3,
        "ms_each": [s * 1e3 for s in seconds],
        "peak_extra_gib": None if extra is None else extra / GIB,
        "peak_total_gib": None if total is None else total / GIB,
    }


def guarded(row: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one row's measurement: out of memory and other failures become the row's status,
    so one failing row does not lose the others."""
    try:
        row.update(work(), status="ok")
    except torch.cuda.OutOfMemoryError as error:
        row.update(status="OOM", note=str(error).split(".")[0][:200])
    except Exception as error:
        traceback.print_exc()
        row.update(status="error", note=f"{type(error).__name__}: {error}"[:400])
    free_memory()
    return row


# --- output layer + loss -------------------------------------------------------------------


@dataclass
class HeadInputs:
    """One problem, as seglm takes it and, for the CE baselines, already shifted."""

    hidden: Tensor  # [B, T, H] leaf
    weight: Tensor  # [V, H] leaf (a trained head)
    labels: Tensor  # [B, T] unshifted
    shifted_hidden: Tensor  # [B * (T - 1), H] leaf: the rows that predict a token
    shifted_targets: Tensor  # [B * (T - 1)]

    def leaves(self) -> tuple[Tensor, ...]:
        return self.hidden, self.weight, self.shifted_hidden

    def clear_grads(self) -> None:
        for leaf in self.leaves():
            leaf.grad = None

    def grad_norm(self) -> float:
        """Norm of every gradient the last backward left (float64 sum of squares)."""
        grads = [leaf.grad for leaf in self.leaves() if leaf.grad is not None]
        return math.sqrt(sum(float(g.double().square().sum()) for g in grads))


def head_inputs(
    n: int, vocab: int, size: int, sequence_length: int, device: torch.device, dtype: torch.dtype
) -> HeadInputs:
    batch = max(1, n // sequence_length)
    length = n // batch
    generator = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(batch, length, size, generator=generator, device=device).to(dtype)
    # Logits of standard deviation 3, a peaked distribution like a trained model's (fused.py).
    weight = torch.randn(vocab, size, generator=generator, device=device)
    weight = weight.mul_(3 / size**0.5).to(dtype)
    labels = zipf_targets(batch * length, vocab, torch.Generator().manual_seed(0))
    labels = labels.reshape(batch, length).to(device)
    shifted = hidden[:, :-1].reshape(-1, size).clone()
    return HeadInputs(
        hidden.requires_grad_(),
        weight.requires_grad_(),
        labels,
        shifted.requires_grad_(),
        labels[:, 1:].reshape(-1).contiguous(),
    )


HeadLoss = Callable[[HeadInputs], Tensor]


def seglm_losses(spec: str) -> list[tuple[str, HeadLoss]]:
    objective = Objective.from_spec(spec)

    # A term that compares with a reference model (ASFT) gets one: the same states and weight
    # without gradient, so its rows include the reference's share of the work.
    uses_reference = objective.uses_reference

    def fused(inputs: HeadInputs) -> Tensor:
        reference = (
            (inputs.hidden.detach(), inputs.weight.detach(), None) if uses_reference else None
        )
        return fused_objective_loss(
            objective, inputs.hidden, inputs.weight, inputs.labels, reference=reference
        ).loss

    def materialised(inputs: HeadInputs) -> Tensor:
        reference = None
        if uses_reference:
            with torch.no_grad():
                reference = F.linear(inputs.hidden.detach(), inputs.weight.detach())
        logits = F.linear(inputs.hidden, inputs.weight)
        return objective(logits, inputs.labels, reference_logits=reference).loss

    return [(FUSED, fused), (MATERIALISED, materialised)]


def ce_baselines(device: torch.device) -> list[tuple[str, HeadLoss | None, str]]:
    """The other libraries' CE from hidden states and weight: (name, loss or None, why not)."""
    baselines: list[tuple[str, HeadLoss | None, str]] = []
    if device.type != "cuda":
        baselines += [(LIGER, None, "needs CUDA (Triton kernels)"), (CCE, None, "needs CUDA")]
    else:
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

            def liger(inputs: HeadInputs) -> Tensor:
                return liger_fused_linear_cross_entropy(
                    inputs.shifted_hidden, inputs.weight, inputs.shifted_targets
                )

            baselines.append((LIGER, liger, ""))
        except Exception as error:  # missing, or not matching this torch/triton
            baselines.append((LIGER, None, f"liger-kernel not importable ({error}); {EXTRAS_HINT}"))
        try:
            from cut_cross_entropy import linear_cross_entropy

            def cce(inputs: HeadInputs) -> Tensor:
                return linear_cross_entropy(
                    inputs.shifted_hidden, inputs.weight, inputs.shifted_targets
                )

            baselines.append((CCE, cce, ""))
        except Exception as error:
            baselines.append(
                (CCE, None, f"cut-cross-entropy not importable ({error}); {EXTRAS_HINT}")
            )
    try:
        from trl.kernels import ChunkedLogProbFunction

        # The kernel's backward imports trl.trainer.utils (and so datasets): import it now, and
        # the vocabulary tile TRL's own fused head uses.
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        def trl(inputs: HeadInputs) -> Tensor:
            # Only the log-probabilities (SFTTrainer also asks entropy and top-1 for its metrics).
            log_probs = ChunkedLogProbFunction.apply(
                inputs.shifted_hidden,
                inputs.weight,
                None,
                inputs.shifted_targets,
                1.0,
                _CHUNKED_LOGPROB_CHUNK_SIZE,
                None,
                1.0,
                (),
            )[0]
            return -log_probs.mean()

        baselines.append((TRL, trl, ""))
    except Exception as error:
        baselines.append((TRL, None, f"trl not importable ({error}); {EXTRAS_HINT}"))
    return baselines


class Budget:
    """Rows started after ``seconds`` are skipped, so one device call ends in time."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def left(self) -> float | None:
        """Seconds left (None: no budget)."""
        return None if self.deadline is None else self.deadline - time.monotonic()


def measure_head(inputs: HeadInputs, loss: HeadLoss, clock: Clock, sizes: Sizes) -> dict[str, Any]:
    def run() -> Tensor:
        value = loss(inputs)
        value.backward()
        return value.detach()

    def check(value: Tensor) -> dict[str, float]:
        return {"loss": float(value), "grad_norm": inputs.grad_norm()}

    try:
        return measure(run, inputs.clear_grads, check, clock, sizes.warmup, sizes.repeats)
    finally:
        inputs.clear_grads()


def head_rows(
    sizes: Sizes,
    shapes: list[str],
    device: torch.device,
    dtype: torch.dtype,
    budget: Budget,
) -> Iterator[dict[str, Any]]:
    clock = Clock(device)
    ce_spec = Objective.from_spec("ce").spec
    jobs = [
        (method, Objective.from_spec(spec).spec, loss, "")
        for spec in objective_specs()
        for method, loss in seglm_losses(spec)
    ]
    jobs += [(name, ce_spec, loss, why) for name, loss, why in ce_baselines(device)]
    for shape in shapes:
        n, vocab, size = parse_shape(shape)
        inputs = head_inputs(n, vocab, size, sizes.sequence_length, device, dtype)
        for method, spec, loss, why in jobs:
            row: dict[str, Any] = {"n": n, "v": vocab, "h": size, "method": method, "spec": spec}
            if loss is None or budget.spent():
                row.update(status="skipped", note=why or "time budget spent")
            else:
                guarded(row, lambda x=inputs, loss=loss: measure_head(x, loss, clock, sizes))
            yield row
        del inputs
        free_memory()


# --- LoRA training step --------------------------------------------------------------------


def random_llama(model_config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    """A randomly initialised Llama of the given configuration, built on ``device``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**model_config), dtype=dtype)
    return model.to(device)


class LoraStep:
    """Forward, objective, backward and AdamW update of a LoRA model on one fixed batch, through
    the fused head as ``SegLMTrainer.compute_loss`` does it, or on materialised logits."""

    def __init__(self, sizes: Sizes, device: torch.device, dtype: str) -> None:
        config = TrainConfig(model=sizes.model_name, adapter="lora", dtype=dtype)
        model = random_llama(sizes.model, device, parse_dtype(base_dtype(config)))
        self.model = add_adapter(model, config)
        self.model.train()
        tokens = zipf_targets(
            sizes.batch * sizes.length, model.config.vocab_size, torch.Generator().manual_seed(0)
        )
        self.input_ids = tokens.reshape(sizes.batch, sizes.length).to(device)
        self.answer_mask = torch.zeros_like(self.input_ids)
        self.answer_mask[:, sizes.length - sizes.answer :] = 1
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.initial = [p.detach().clone() for p in self.trainable]
        self.device_type, self.bf16 = device.type, dtype == "bf16"
        self.start(Objective(), fused=False)

    def start(self, objective: Objective, fused: bool) -> None:
        """The same adapter weights, a fresh optimiser and seed (LoRA dropout) for each row."""
        with torch.no_grad():
            for parameter, initial in zip(self.trainable, self.initial, strict=True):
                parameter.copy_(initial)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-4, weight_decay=0.01)
        self.objective = objective
        self.head: FusedObjectiveHead | None = None
        if fused:
            self.head = install_fused_head(self.model, objective)
        else:
            remove_fused_head(self.model)
        torch.manual_seed(0)

    def __call__(self) -> Tensor:
        autocast = torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)
        with autocast:
            reference = self.reference() if self.objective.uses_reference else None
            if self.head is not None:
                with self.head.computing_loss(
                    self.input_ids, self.answer_mask, reference=reference
                ):
                    loss = self.model(input_ids=self.input_ids).logits
            else:
                logits = self.model(input_ids=self.input_ids).logits
                loss = self.objective(
                    logits, self.input_ids, self.answer_mask, reference_logits=reference
                ).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def reference(self) -> Any:
        """The reference's forward as SegLMTrainer runs it for LoRA: adapters off, no gradient;
        its head's input on the fused path, its logits otherwise."""
        with torch.no_grad(), self.model.disable_adapter():
            if self.head is None:
                return self.model(input_ids=self.input_ids).logits
            with self.head.capturing_input():
                self.model(input_ids=self.input_ids)
            return self.head.take_input()

    def measure(
        self, objective: Objective, fused: bool, clock: Clock, sizes: Sizes
    ) -> dict[str, Any]:
        self.start(objective, fused)
        measured = measure(
            self,
            lambda: None,
            lambda loss: {"first_step_loss": float(loss)},
            clock,
            sizes.step_warmup,
            sizes.step_repeats,
        )
        tokens = sizes.batch * sizes.length
        return {**measured, "tokens_per_s": tokens / (measured["ms"] / 1e3)}


def train_rows(
    sizes: Sizes, device: torch.device, dtype: str, budget: Budget
) -> Iterator[dict[str, Any]]:
    clock = Clock(device)
    setup: dict[str, Any] = {"status": "skipped", "note": "time budget spent"}
    if not budget.spent():
        guarded(setup, lambda: {"step": LoraStep(sizes, device, dtype)})
    step = setup.pop("step", None)
    for spec in objective_specs():
        objective = Objective.from_spec(spec)
        for fused in (True, False):
            row: dict[str, Any] = {"model": sizes.model_name, "batch": sizes.batch}
            row.update(length=sizes.length, spec=objective.spec, fused=fused)
            if step is None or budget.spent():
                row.update(
                    setup if step is None else {"status": "skipped", "note": "time budget spent"}
                )
            else:
                guarded(row, lambda s=step, o=objective, f=fused: s.measure(o, f, clock, sizes))
            yield row
    del step
    free_memory()


# --- targets and tables --------------------------------------------------------------------


def ratio(row: dict[str, Any] | None, other: dict[str, Any] | None, key: str) -> float | None:
    if row is None or other is None or row.get(key) is None or not other.get(key):
        return None
    return row[key] / other[key]


def target(what: str, value: float | None, limit: float) -> dict[str, Any]:
    return {
        "target": what,
        "limit": limit,
        "ratio": value,
        "met": None if value is None else value <= limit,
    }


def add_targets(rows: list[dict[str, Any]]) -> None:
    """Issue 17's targets on each shape's rows, and each row's time in units of fused CE's."""
    ce_spec = Objective.from_spec("ce").spec
    shapes = {(row["n"], row["v"], row["h"]) for row in rows}
    for shape in shapes:
        group = [row for row in rows if (row["n"], row["v"], row["h"]) == shape]
        measured = {(r["method"], r["spec"]): r for r in group if r.get("status") == "ok"}
        ce = measured.get((FUSED, ce_spec))
        for row in group:
            row["x_fused_ce_time"] = ratio(measured.get((row["method"], row["spec"])), ce, "ms")
            row["targets"] = []
            if row["method"] != FUSED:
                continue
            if row["spec"] == ce_spec:
                liger, cce = measured.get((LIGER, ce_spec)), measured.get((CCE, ce_spec))
                row["targets"] = [
                    target(
                        f"time ≤ {CE_TIME_LIMIT}x {LIGER}", ratio(ce, liger, "ms"), CE_TIME_LIMIT
                    ),
                    target(
                        f"memory ≤ {CE_MEMORY_LIMIT}x {CCE}",
                        ratio(ce, cce, "peak_extra_gib"),
                        CE_MEMORY_LIMIT,
                    ),
                ]
            else:
                is_set = any(get_term(t.name).is_set for t in LossSpec.parse(row["spec"]).terms)
                limit = SET_LIMIT if is_set else PER_TOKEN_LIMIT
                row["targets"] = [
                    target(f"time ≤ {limit}x fused CE", row["x_fused_ce_time"], limit)
                ]


def cell(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def status_cell(row: dict[str, Any], value: str) -> str:
    if row.get("status") == "ok":
        return value
    note = row.get("note")
    return f"{row['status']}: {note}" if note else row["status"]


def met_cell(entry: dict[str, Any]) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[entry["met"]]


def head_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | V | H | method | loss spec | ms | peak GiB | loss | x fused CE time | target "
        "| met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        targets = row.get("targets", [])
        what = "; ".join(f"{t['target']} ({cell(t['ratio'], suffix='x')})" for t in targets)
        lines.append(
            f"| {row['n']} | {row['v']} | {row['h']} | {row['method']} | {row['spec']} "
            f"| {status_cell(row, cell(row.get('ms'), 1))} | {cell(row.get('peak_extra_gib'))} "
            f"| {cell(row.get('loss'), 4)} | {cell(row.get('x_fused_ce_time'))} | {what} "
            f"| {'; '.join(met_cell(t) for t in targets)} |"
        )
    return "\n".join(lines)


def add_step_ratios(rows: list[dict[str, Any]]) -> None:
    ce_spec = Objective.from_spec("ce").spec
    ce = next(
        (r for r in rows if r["spec"] == ce_spec and r["fused"] and r.get("status") == "ok"), None
    )
    for row in rows:
        row["x_fused_ce_time"] = ratio(row if row.get("status") == "ok" else None, ce, "ms")


def train_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | batch x length | loss spec | head | ms/step | tokens/s | peak GiB (step's "
        "own) | x fused CE time | first-step loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        peak = f"{cell(row.get('peak_total_gib'))} ({cell(row.get('peak_extra_gib'))})"
        lines.append(
            f"| {row['model']} | {row['batch']} x {row['length']} | {row['spec']} "
            f"| {'fused' if row['fused'] else 'materialised'} "
            f"| {status_cell(row, cell(row.get('ms'), 1))} | {cell(row.get('tokens_per_s'), 0)} "
            f"| {peak} | {cell(row.get('x_fused_ce_time'))} "
            f"| {cell(row.get('first_step_loss'), 4)} |"
        )
    return "\n".join(lines)


def progress(row: dict[str, Any]) -> str:
    if "step" in row:  # the smoke test
        seconds = f" ({row['seconds']} s)" if "seconds" in row else ""
        return (
            f"[{time.strftime('%H:%M:%S')}] smoke {row['step']}: {status_cell(row, 'ok')}{seconds}"
        )
    what = " ".join(str(row[k]) for k in ("n", "v", "h", "method", "model") if k in row)
    what += f" {row['spec']}" + ("" if "fused" not in row else f" fused={row['fused']}")
    return (
        f"[{time.strftime('%H:%M:%S')}] {what}: {status_cell(row, cell(row.get('ms'), 1) + ' ms')}"
    )


PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "triton",
    "pydantic",
    "liger-kernel",
    "cut-cross-entropy",
    "trl",
    "datasets",
)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def target_summary(rows: list[dict[str, Any]]) -> str:
    verdicts = [entry["met"] for row in rows for entry in row.get("targets", [])]
    met, missed = verdicts.count(True), verdicts.count(False)
    return f"targets: {met} met, {missed} missed, {verdicts.count(None)} not measured"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU sizes (the default without CUDA)")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["smoke", "head", "train"],
        default=["head", "train"],
        help="smoke: seglm train/eval end to end (benchmarks/gpu_smoke.py; not by default)",
    )
    parser.add_argument("--shapes", nargs="+", metavar="NxVxH", help="output-layer shapes")
    parser.add_argument(
        "--dtype", choices=["bf16", "fp32"], help="default: bf16 on CUDA, else fp32"
    )
    parser.add_argument("--time-budget-s", type=float, help="skip the rows that would start later")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/gpu.json)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.small or device.type != "cuda"
    sizes = SMALL if small else FULL
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    name = "gpu-small.json" if small else "gpu.json"
    out = args.out or Path(__file__).parent / "results" / name
    budget = Budget(args.time_budget_s)
    results: dict[str, Any] = {
        "settings": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": (
                torch.cuda.get_device_name()
                if device.type == "cuda"
                else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
            ),
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "versions": versions(),
            "dtype": dtype,
            "loss_names": list(LOSS_NAMES),
            "sizes": asdict(sizes),
            "command": sys.argv if argv is None else ["benchmarks/gpu.py", *argv],
            # Whether the weight gradient's bf16 chunk products are added in float32 by
            # torch.addmm(out_dtype=...) here (else by a float32 product).
            "fp32_sums_of_bf16_products": _sums_half_products_in_float32(device),
        },
        "smoke": [],
        "head": [],
        "train_step": [],
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"{results['settings']['device']}, {dtype}, {'small' if small else 'full'} sizes",
        flush=True,
    )
    smoke_dir = Path(tempfile.mkdtemp(prefix="seglm-smoke-"))  # model folders, runs
    cuda = device.type == "cuda"
    parts = {  # part -> (results key, rows)
        "smoke": (
            "smoke",
            lambda: smoke_rows(smoke_dir, cuda, torch.cuda.device_count(), budget.left),
        ),
        "train": ("train_step", lambda: train_rows(sizes, device, dtype, budget)),
        "head": (
            "head",
            lambda: head_rows(
                sizes, args.shapes or list(sizes.shapes), device, parse_dtype(dtype), budget
            ),
        ),
    }
    # The short parts first: a spent budget skips head rows.
    for part in ("smoke", "train", "head"):
        if part not in args.parts:
            continue
        key, rows = parts[part]
        for row in rows():
            print(progress(row), flush=True)
            results[key].append(row)
            save()
    shutil.rmtree(smoke_dir)
    add_step_ratios(results["train_step"])
    add_targets(results["head"])
    save()
    if results["smoke"]:
        print("\n" + smoke_table(results["smoke"]))
    if results["head"]:
        print("\n" + head_table(results["head"]) + "\n\n" + target_summary(results["head"]))
    if results["train_step"]:
        print("\n" + train_table(results["train_step"]))
    print(f"\nwrote {out}")
    failed = [
        row
        for row in results["smoke"] + results["head"] + results["train_step"]
        if row.get("status") == "error" and row.get("method", FUSED) in (FUSED, MATERIALISED)
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
