"""Running the batches: out-of-memory back-off, throughput, progress."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from seglm.evaluate.common import OUT_OF_MEMORY
from seglm.evaluate.requests import Request

logger = logging.getLogger(__name__)


@dataclass
class Throughput:
    """What this invocation scored, and how fast."""

    examples: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    @classmethod
    def combined(cls, parts: Sequence[Throughput]) -> Throughput:
        """Ranks that ran side by side: their examples and tokens add up, the time is the
        slowest rank's."""
        return cls(
            sum(part.examples for part in parts),
            sum(part.generated_tokens for part in parts),
            max(part.seconds for part in parts),
        )

    def to_dict(self) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        return {
            "examples": self.examples,
            "generated_tokens": self.generated_tokens,
            "seconds": round(self.seconds, 3),
            "examples_per_s": round(self.examples / seconds, 4) if self.examples else 0.0,
            "tokens_per_s": round(self.generated_tokens / seconds, 2) if self.examples else 0.0,
        }

    def describe(self) -> str:
        """``1.20 ex/s, 150 tok/s`` (generated tokens; none when only scoring choices)."""
        rates = self.to_dict()
        text = f"{rates['examples_per_s']:.2f} ex/s"
        return text + (f", {rates['tokens_per_s']:.0f} tok/s" if self.generated_tokens else "")


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in OUT_OF_MEMORY)


def run_batches(
    requests: Sequence[Request],
    batch_size: int,
    score: Callable[[Sequence[Request], int], tuple[list[dict[str, Any]], int]],
    write: Callable[[list[dict[str, Any]]], None],
    on_batch: Callable[[Throughput, int], None] = lambda throughput, advance: None,
) -> Throughput:
    """Score ``requests`` longest first (less padding; an out-of-memory error comes at once), in
    batches of ``batch_size``, halved whenever a batch runs out of memory."""
    ordered = sorted(requests, key=lambda request: request.length, reverse=True)
    throughput = Throughput()
    started = time.perf_counter()
    position, size = 0, batch_size
    while position < len(ordered):
        batch = ordered[position : position + size]
        try:
            records, tokens = score(batch, size)
        except (RuntimeError, MemoryError) as error:
            if size == 1 or not (isinstance(error, MemoryError) or is_out_of_memory(error)):
                raise
            size //= 2
            logger.warning("out of memory: batch size lowered to %d", size)
            _release_memory()
            continue
        write(records)
        position += len(batch)
        throughput.examples += len(batch)
        throughput.generated_tokens += tokens
        throughput.seconds = time.perf_counter() - started
        on_batch(throughput, len(batch))
    return throughput


def _release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def progress_display(
    total: int, label: str, enabled: bool
) -> Iterator[Callable[[Throughput, int], None]]:
    """A progress bar (on stderr) with examples/s and generated tokens/s; one line per batch
    when stderr is not a terminal (a log file)."""
    if not enabled:
        yield lambda throughput, advance: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        done = 0

        def log_line(throughput: Throughput, advance: int) -> None:
            nonlocal done
            done += advance
            console.print(f"{label}: {done}/{total} ({throughput.describe()})", highlight=False)

        yield log_line
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=console) as bar:
        task_id = bar.add_task(label, total=total, rate="")

        def update(throughput: Throughput, advance: int) -> None:
            bar.update(task_id, advance=advance, rate=throughput.describe())

        yield update


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while evaluating; a caller's model gets its mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
