from __future__ import annotations

import re

import pytest

from seglm.tasks import Example, get_task

STEP = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")
SMALL = {"train_size": 300, "validation_size": 50, "test_size": 100}


def steps_of(example: Example) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in STEP.findall(example.target)]


def check_chain(example: Example) -> list[tuple[int, str, int, int]]:
    """Every step is correct arithmetic and starts from the previous result."""
    steps = steps_of(example)
    exact = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for index, (a, op, b, c) in enumerate(steps):
        if op == "/":
            assert a % b == 0 and a // b == c
        else:
            assert exact[op](a, b) == c
        if index:
            assert a == steps[index - 1][3]
    assert example.target.endswith(f"#### {steps[-1][3]}")
    assert example.metadata == {"answer": str(steps[-1][3])}
    return steps


def test_generation_is_deterministic_and_pinned() -> None:
    first = get_task("arith", **SMALL).load("test", limit=2)
    assert first == get_task("arith", **SMALL).load("test", limit=2)
    assert first[0].prompt == (
        "Question: Liam owns 8 marbles. A friend gives Liam 6 more marbles. Liam splits the "
        "marbles into 7 equal groups and keeps one group. Liam ends up with 9 times as many "
        "marbles as before. How many marbles does Liam have now?\nAnswer: "
    )
    assert first[0].target == "<<8+6=14>> <<14/7=2>> <<2*9=18>> #### 18"
    assert get_task("arith", seed=1, **SMALL).load("test", limit=2) != first


def test_splits_have_their_sizes_and_share_no_problem() -> None:
    task = get_task("arith", **SMALL)
    targets = {split: [e.target for e in task.load(split)] for split in task.splits}
    assert {split: len(t) for split, t in targets.items()} == {
        "train": 300,
        "validation": 50,
        "test": 100,
    }
    # A paper target spells the whole problem (start, operations, operands).
    all_targets = [t for split in targets.values() for t in split]
    assert len(set(all_targets)) == len(all_targets)


def test_default_knobs_use_every_operation_with_correct_steps() -> None:
    examples = get_task("arith", **SMALL).load("train")
    seen = set()
    for example in examples:
        steps = check_chain(example)
        assert 2 <= len(steps) <= 3
        assert all(1 <= c <= 100 and 2 <= b <= 12 for _, _, b, c in steps)
        assert 2 <= steps[0][0] <= 12
        seen |= {op for _, op, _, _ in steps}
    assert seen == {"+", "-", "*", "/"}


def test_knobs_bound_the_problems() -> None:
    task = get_task(
        "arith", min_steps=3, max_steps=4, operand_min=5, operand_max=9, max_value=60,
        operations="+*", train_size=0, validation_size=0, test_size=80,
    )  # fmt: skip
    lengths = set()
    for example in task.load("test"):
        steps = check_chain(example)
        lengths.add(len(steps))
        assert all(op in "+*" and 5 <= b <= 9 and c <= 60 for _, op, b, c in steps)
    assert lengths == {3, 4}


def test_full_target_is_a_worked_solution_with_the_same_steps() -> None:
    paper = get_task("arith", **SMALL).load("test", limit=1)[0]
    full = get_task("arith", target="full", **SMALL).load("test", limit=1)[0]
    assert full.target == full.reference == paper.reference
    assert full.target.splitlines() == [
        "Liam now has 8+6 = <<8+6=14>>14 marbles.",
        "Liam now has 14/7 = <<14/7=2>>2 marbles.",
        "Liam now has 2*9 = <<2*9=18>>18 marbles.",
        "#### 18",
    ]
    assert steps_of(full) == steps_of(paper)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_steps": 3, "max_steps": 2}, "min_steps <= max_steps"),
        ({"operand_min": 0}, "1 <= operand_min"),
        ({"operations": "+%"}, "operations must be distinct characters"),
        ({"test_size": -1}, "sizes must be >= 0"),
    ],
)
def test_bad_knobs_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_task("arith", **options)


def test_too_small_a_problem_space_is_an_error() -> None:
    task = get_task(
        "arith", min_steps=1, max_steps=1, operand_min=2, operand_max=3, operations="+",
        train_size=0, validation_size=0, test_size=10,
    )  # fmt: skip
    with pytest.raises(ValueError, match="found only 4 distinct problems for 'test'"):
        task.load("test")


def test_a_generated_split_says_what_it_holds() -> None:
    """Not GSM8K's note ("90% of the official train set") that the class would inherit."""
    task = get_task("arith", train_size=40, seed=3)
    assert task.describe_split("train") == (
        "40 problems generated with seed 3, none shared with the other splits"
    )
