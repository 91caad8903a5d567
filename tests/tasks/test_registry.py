from __future__ import annotations

import pytest

from seglm.tasks import TASKS, get_task, parse_option_text, task_class


def test_every_task_describes_its_data() -> None:
    assert TASKS == ("gsm8k", "mathqa", "openbookqa", "hellaswag", "arith", "jsonl")
    formats = {name: get_task(name).answer_format for name in TASKS}
    assert formats == {
        "gsm8k": "gsm8k",
        "mathqa": "mathqa",
        "openbookqa": "choice",
        "hellaswag": "choice",
        "arith": "gsm8k",
        "jsonl": "text",
    }
    lengths = {name: get_task(name).default_max_length for name in TASKS}
    assert lengths == {
        "gsm8k": 384,
        "mathqa": 1024,
        "openbookqa": 128,
        "hellaswag": 256,
        "arith": 128,
        "jsonl": 1024,
    }
    assert get_task("gsm8k", target="full").default_max_length == 640
    assert get_task("hellaswag").stop_strings == ("\n",)
    assert get_task("gsm8k").stop_strings == ("\nQuestion:",)


def test_unknown_task_suggests_the_closest_name() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'gsm8' \(did you mean 'gsm8k'\?\)"):
        get_task("gsm8")
    with pytest.raises(ValueError, match="available: gsm8k, mathqa"):
        get_task("squad")


def test_unknown_option_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"gsm8k' has no option steps; its options: .*target"):
        get_task("gsm8k", steps=3)


def test_option_text_is_typed_from_the_defaults() -> None:
    options = parse_option_text(
        task_class("arith"), ["max-steps=4", "operations=+-", "target=full", "seed=7"]
    )
    assert options == {"max_steps": 4, "operations": "+-", "target": "full", "seed": 7}
    assert parse_option_text(task_class("openbookqa"), ["context=false"]) == {"context": False}
    assert parse_option_text(task_class("jsonl"), ["choices_field=opts"]) == {
        "choices_field": "opts"
    }
    with pytest.raises(ValueError, match="option 'seed' expects an integer, got 'x'"):
        parse_option_text(task_class("arith"), ["seed=x"])
    with pytest.raises(ValueError, match="must look like key=value"):
        parse_option_text(task_class("arith"), ["seed"])
    with pytest.raises(ValueError, match="has no option 'tokenizer'"):
        parse_option_text(task_class("arith"), ["tokenizer=x"])
