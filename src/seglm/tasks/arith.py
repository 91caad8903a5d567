"""``arith``: synthetic multi-step arithmetic word problems, generated here, in GSM8K's format.

No download: each split is generated from its own seed, deterministically (``random.Random``
with integer seeds; no ``hash()``), and the splits share no problem (test is generated first,
then validation without test's problems, then train without either). A problem is a start
amount and a chain of steps; each step's operation is drawn among those that keep every value
an integer in ``[1, max_value]``, then its operand among the allowed ones.

Example (``target="paper"``, the default)::

    Question: Maya has 7 shells. Maya finds 5 more shells. Then the number of shells Maya has
    becomes 3 times as large. How many shells does Maya have now?
    Answer: <<7+5=12>> <<12*3=36>> #### 36

With ``target="full"`` the target is the worked solution, one line per step
(``Maya now has 7+5 = <<7+5=12>>12 shells.``), then ``#### 36``; that is also the reference.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from seglm.metrics.arithmetic import BINARY_OPERATIONS

from .base import DataDir, LoadReport, Record
from .gsm8k import GSM8K

OPERATIONS = "+-*/"
GENERATION_ORDER = ("test", "validation", "train")

NAMES = (
    "Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Iris", "Jonas", "Kemi",
    "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor",
    "Wen", "Yusuf",
)  # fmt: skip
OBJECTS = (
    "apples", "marbles", "stickers", "books", "pencils", "coins", "shells", "cookies", "cards",
    "stamps", "beads", "flowers", "eggs", "balloons", "buttons", "candles", "ribbons", "acorns",
)  # fmt: skip
STARTS = (
    "{name} has {n} {obj}.",
    "{name} starts the day with {n} {obj}.",
    "{name} owns {n} {obj}.",
)
STEPS = {
    "+": (
        "{name} buys {n} more {obj}.",
        "Then {name} finds {n} more {obj}.",
        "A friend gives {name} {n} more {obj}.",
        "{name} wins {n} more {obj}.",
    ),
    "-": (
        "{name} gives away {n} {obj}.",
        "Then {name} loses {n} {obj}.",
        "{name} sells {n} {obj}.",
        "{name} uses up {n} {obj}.",
    ),
    "*": (
        "Then the number of {obj} {name} has becomes {n} times as large.",
        "{name} ends up with {n} times as many {obj} as before.",
    ),
    "/": (
        "{name} splits the {obj} into {n} equal groups and keeps one group.",
        "{name} divides the {obj} equally into {n} bags and keeps one bag.",
    ),
}


@dataclass(frozen=True)
class Problem:
    start: int
    steps: tuple[tuple[str, int], ...]  # (operation, operand)


def apply(operation: str, value: int, operand: int) -> int:
    """One step; the generator draws only divisions that leave no remainder."""
    return round(BINARY_OPERATIONS[operation](value, operand))


@dataclass
class Arith(GSM8K):
    """Generated GSM8K-style arithmetic; options are the difficulty knobs and split sizes."""

    name: ClassVar[str] = "arith"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")

    min_steps: int = 2
    max_steps: int = 3
    operand_min: int = 2
    operand_max: int = 12
    max_value: int = 100
    operations: str = OPERATIONS
    train_size: int = 2000
    validation_size: int = 200
    test_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"arith needs 1 <= min_steps <= max_steps; got {self.min_steps}, {self.max_steps}"
            )
        if not 1 <= self.operand_min <= self.operand_max <= self.max_value:
            raise ValueError(
                "arith needs 1 <= operand_min <= operand_max <= max_value; got "
                f"{self.operand_min}, {self.operand_max}, {self.max_value}"
            )
        if (
            not self.operations
            or set(self.operations) - set(OPERATIONS)
            or len(set(self.operations)) != len(self.operations)
        ):
            raise ValueError(
                f"arith operations must be distinct characters of {OPERATIONS!r}; "
                f"got {self.operations!r}"
            )
        if min(self.train_size, self.validation_size, self.test_size) < 0:
            raise ValueError("arith split sizes must be >= 0")

    def describe_split(self, split: str) -> str:
        """What a generated split holds (not GSM8K's notes, which this class would inherit)."""
        split = self.resolve_split(split)
        return (
            f"{self.size(split)} problems generated with seed {self.seed}, none shared with "
            "the other splits"
        )

    @property
    def plain_max_length(self) -> int:  # type: ignore[override]
        return 128 if self.target == "paper" else 256

    @property
    def max_new_tokens(self) -> int:  # type: ignore[override]
        return 64 if self.target == "paper" else 128

    def records(self, split: str, data_dir: DataDir, report: LoadReport) -> Iterator[Record]:
        report.source = f"generated (seed {self.seed})"
        problems = self.generate(split)
        for index, (problem, rng_state) in enumerate(problems):
            question, solution = self.render(problem, random.Random(rng_state))
            raw = {"question": question, "answer": solution}
            yield Record(f"arith/{split}#{index}", split, index, raw)

    # -- generation ------------------------------------------------------------------------

    def size(self, split: str) -> int:
        return {
            "train": self.train_size,
            "validation": self.validation_size,
            "test": self.test_size,
        }[split]

    def generate(self, split: str) -> list[tuple[Problem, int]]:
        """The split's problems, each with the seed that words it; earlier splits in
        ``GENERATION_ORDER`` are generated first so that none of their problems repeat."""
        taken: set[Problem] = set()
        for name in GENERATION_ORDER:
            rng = random.Random(self.seed * len(GENERATION_ORDER) + GENERATION_ORDER.index(name))
            problems: list[tuple[Problem, int]] = []
            attempts = 0
            while len(problems) < self.size(name):
                attempts += 1
                if attempts > 100 * self.size(name) + 1000:
                    raise ValueError(
                        f"arith: found only {len(problems)} distinct problems for {name!r} "
                        f"(wanted {self.size(name)}); widen the knobs or lower {name}_size"
                    )
                problem = self.draw(rng)
                wording_seed = rng.getrandbits(32)
                if problem is not None and problem not in taken:
                    taken.add(problem)
                    problems.append((problem, wording_seed))
            if name == split:
                return problems
        raise AssertionError(split)

    def draw(self, rng: random.Random) -> Problem | None:
        """One problem, or None when the drawn start admits no chain of the drawn length."""
        value = rng.randint(self.operand_min, self.operand_max)
        start, steps = value, []
        for _ in range(rng.randint(self.min_steps, self.max_steps)):
            choices = {op: self.operands(op, value) for op in self.operations}
            feasible = [op for op in self.operations if choices[op]]
            if not feasible:
                return None
            operation = rng.choice(feasible)
            operand = rng.choice(choices[operation])
            steps.append((operation, operand))
            value = apply(operation, value, operand)
        return Problem(start, tuple(steps))

    def operands(self, operation: str, value: int) -> list[int]:
        """The operands that keep the result an integer in [1, max_value] (x1 and /1 excluded)."""
        low = self.operand_min if operation in "+-" else max(2, self.operand_min)
        candidates = range(low, self.operand_max + 1)
        if operation == "/":
            return [n for n in candidates if value % n == 0]
        return [n for n in candidates if 1 <= apply(operation, value, n) <= self.max_value]

    def render(self, problem: Problem, rng: random.Random) -> tuple[str, str]:
        """The question and its GSM8K-style worked solution."""
        name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
        sentences = [rng.choice(STARTS).format(name=name, n=problem.start, obj=obj)]
        lines = []
        value = problem.start
        for operation, operand in problem.steps:
            sentences.append(rng.choice(STEPS[operation]).format(name=name, n=operand, obj=obj))
            result = apply(operation, value, operand)
            formula = f"{value}{operation}{operand}"
            lines.append(f"{name} now has {formula} = <<{formula}={result}>>{result} {obj}.")
            value = result
        sentences.append(f"How many {obj} does {name} have now?")
        return " ".join(sentences), "\n".join([*lines, f"#### {value}"])
