from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from seglm.data import IGNORE_INDEX, DataCollator, tokenize_examples
from seglm.tasks import Example


def example(prompt: str, target: str, index: int = 0) -> Example:
    return Example(id=f"e{index}", prompt=prompt, target=target, reference=target, source=prompt)


class CharTokenizer:
    """One id per character (its code point), with a BOS the tokenizer adds, like Llama's."""

    bos_token, bos_token_id, eos_token_id = "<s>", 1, 2

    def __call__(self, texts: str | list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        def encode(text: str) -> list[int]:
            return ([self.bos_token_id] if add_special_tokens else []) + [ord(c) for c in text]

        ids = encode(texts) if isinstance(texts, str) else [encode(text) for text in texts]
        return {"input_ids": ids}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from seglm.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def test_prompt_and_target_are_tokenised_apart_and_eos_is_trained(tokenizer: Any) -> None:
    prompt, target = "Question: 48 halved?\nAnswer: ", "<<48/2=24>> #### 24"
    data = tokenize_examples([example(prompt, target)], tokenizer, max_length=64)
    feature = data.features[0]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = [*tokenizer(target, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert feature["input_ids"] == prompt_ids + answer_ids
    # Tokenising the joined text would merge the space before "<<" into one token: the prompt
    # the model trains on would differ from the one it sees alone at generation.
    assert tokenizer(prompt + target)["input_ids"][: len(prompt_ids)] != prompt_ids
    assert feature["labels"] == feature["input_ids"]
    assert feature["answer_mask"] == [0] * len(prompt_ids) + [1] * len(answer_ids)
    assert feature["attention_mask"] == [1] * len(feature["input_ids"])
    # pad = EOS for SmolLM2, and EOS is still the last trained label.
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == feature["labels"][-1]


def test_answer_scope_masks_the_prompt(tokenizer: Any) -> None:
    data = tokenize_examples([example("Q: 1+1?\nA: ", "2")], tokenizer, 32, ce_scope="answer")
    feature = data.features[0]
    answer = sum(feature["answer_mask"])
    assert answer == 2  # "2" and EOS
    assert feature["labels"][:-answer] == [IGNORE_INDEX] * (len(feature["labels"]) - answer)
    assert feature["labels"][-answer:] == feature["input_ids"][-answer:]


def test_long_prompt_is_cut_from_the_left_keeping_bos_and_the_answer() -> None:
    data = tokenize_examples([example("abcdefghij", "xyz")], CharTokenizer(), max_length=12)
    assert data.features[0]["input_ids"] == [1, *map(ord, "defghij"), *map(ord, "xyz"), 2]
    assert data.features[0]["answer_mask"] == [0] * 8 + [1] * 4
    assert data.report["truncated"] == 1 and data.report["dropped"] == 0


LONG_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May, and a third as many in June as in May, and she kept twelve for her sister. How many "
    "clips did Natalia sell altogether in April, May and June?"
)


@pytest.mark.parametrize("prompt_style", ["plain", "chat"])
def test_a_long_prompt_loses_the_start_of_its_question_not_its_template(
    tokenizer: Any, prompt_style: str
) -> None:
    from seglm.tasks import get_task
    from seglm.tasks.base import question_prompt

    task = get_task("arith", prompt_style=prompt_style, tokenizer=tokenizer)
    prompt = task.render_prompt(question_prompt(LONG_QUESTION))
    long = Example(
        id="e", prompt=prompt, target="#### 52", reference="#### 52", source=LONG_QUESTION
    )
    full = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer = len(tokenizer("#### 52", add_special_tokens=False)["input_ids"]) + 1
    max_length = full + answer - 20
    data = tokenize_examples([long], tokenizer, max_length)
    assert data.report["truncated"] == 1 and data.report["dropped"] == 0
    feature = data.features[0]
    prompt_ids = feature["input_ids"][: len(feature["input_ids"]) - answer]
    cut = tokenizer.decode(prompt_ids)
    head, tail = prompt.split(LONG_QUESTION)
    # The template (and the chat header) whole, the question's end kept from a word start on.
    assert cut.startswith(head) and cut.endswith(tail)
    kept = cut[len(head) : len(cut) - len(tail)]
    assert LONG_QUESTION.endswith(kept) and len(kept) < len(LONG_QUESTION)
    assert LONG_QUESTION[len(LONG_QUESTION) - len(kept) - 1] == " "
    # Tokenised as one text, as generation would tokenise that prompt.
    assert prompt_ids == tokenizer(cut, add_special_tokens=False)["input_ids"]
    assert len(feature["input_ids"]) <= max_length
    assert data.report["truncated_tokens"] == full - len(prompt_ids) >= 20


def test_prompts_that_cannot_be_cut_to_fit_are_dropped_and_counted() -> None:
    # The template alone ("Question: " + "\nAnswer: ") leaves no room; a prompt without its
    # question text has nothing that may be cut.
    template = example("Question: abcdefgh\nAnswer: ", "xyz")
    template = Example(**{**template.__dict__, "source": "abcdefgh"})
    foreign = example("abcdefghijklmnopqrstuvwxyz", "xyz")
    foreign = Example(**{**foreign.__dict__, "source": "not in the prompt"})
    data = tokenize_examples([template, foreign], CharTokenizer(), max_length=20)
    assert data.report["dropped_prompt_uncuttable"] == 2 and data.report["kept"] == 0
    assert data.report["dropped"] == 2 and data.report["truncated"] == 0


def test_bos_is_not_added_twice_to_a_prompt_that_starts_with_it() -> None:
    data = tokenize_examples([example("<s>ab", "c")], CharTokenizer(), max_length=10)
    assert data.features[0]["input_ids"] == [*map(ord, "<s>ab"), ord("c"), 2]


def test_drop_policy_and_answers_too_long_are_counted() -> None:
    examples = [
        example("short", "ok", 0),
        example("a much longer prompt", "ok", 1),
        example("p", "an answer longer than the limit", 2),
    ]
    for overflow, kept, prompt_drops, truncated in [
        ("drop", [0], 1, 0),
        ("truncate_prompt", [0, 1], 0, 1),
    ]:
        data = tokenize_examples(examples, CharTokenizer(), 16, overflow=overflow)
        assert data.indices == kept
        assert len(data.features) == data.report["kept"] == len(kept)
        assert data.report["dropped_prompt_too_long"] == prompt_drops
        assert data.report["dropped_answer_too_long"] == 1
        assert data.report["dropped"] == prompt_drops + 1
        assert data.report["truncated"] == truncated
        assert all(len(f["input_ids"]) <= 16 for f in data.features)


def test_an_answer_needs_room_for_a_minimum_prompt() -> None:
    # 10 prompt + 4 answer tokens in 9: 5 prompt tokens fit, fewer than the minimum of 8.
    data = tokenize_examples([example("abcdefghi", "xyz")], CharTokenizer(), 9)
    assert data.report["dropped_answer_too_long"] == 1
    data = tokenize_examples([example("abcdefghi", "xyz")], CharTokenizer(), 9, min_prompt_tokens=2)
    assert data.report["truncated"] == 1


def test_report_has_length_statistics_of_the_untruncated_examples() -> None:
    examples = [example("a" * n, "b" * m, n) for n, m in [(1, 1), (3, 2), (5, 3), (11, 4)]]
    report = tokenize_examples(examples, CharTokenizer(), 13).report
    assert report["examples"] == 4 and report["kept"] == 4 and report["truncated"] == 1
    # Prompts gain a BOS; answers an EOS.
    assert report["tokens"]["prompt"] == {"min": 2, "mean": 6.0, "p50": 5.0, "p95": 11.1, "max": 12}
    assert report["tokens"]["answer"] == {"min": 2, "mean": 3.5, "p50": 3.5, "p95": 4.85, "max": 5}
    assert report["tokens"]["total"]["max"] == 17
    assert tokenize_examples([], CharTokenizer(), 12).report["tokens"]["total"] is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"ce_scope": "prompt"}, "ce_scope='prompt' is not one of 'all', 'answer'"),
        ({"overflow": "truncate_answer"}, "overflow='truncate_answer' is not one of"),
        ({"max_length": 1}, "max_length must be at least 2"),
        ({"min_prompt_tokens": 0}, "min_prompt_tokens must be at least 1"),
    ],
)
def test_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    options = {"max_length": 8, **arguments}
    with pytest.raises(ValueError, match=message):
        tokenize_examples([example("a", "b")], CharTokenizer(), **options)


FEATURES = [
    {
        "input_ids": [5, 6, 7],
        "attention_mask": [1, 1, 1],
        "labels": [5, 6, 7],
        "answer_mask": [0, 1, 1],
    },
    {"input_ids": [8], "attention_mask": [1], "labels": [8], "answer_mask": [1]},
]


def test_collator_pads_right_with_the_neutral_value_of_each_key() -> None:
    batch = DataCollator(pad_token_id=0)(FEATURES)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert batch["answer_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_collator_pads_left_and_to_a_multiple() -> None:
    batch = DataCollator(pad_token_id=9, padding_side="left", pad_to_multiple_of=4)(FEATURES)
    assert batch["input_ids"].tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert batch["labels"].tolist() == [[-100, 5, 6, 7], [-100, -100, -100, 8]]


def test_collator_rejects_keys_it_cannot_pad() -> None:
    with pytest.raises(ValueError, match="only input_ids, attention_mask, labels, answer_mask"):
        DataCollator(0)([{"input_ids": [1], "weights": [1]}])
    with pytest.raises(ValueError, match="padding_side"):
        DataCollator(0, padding_side="middle")


def test_trainer_batches_keep_the_answer_mask(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    from seglm.models import tiny_llama

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, remove_unused_columns=False,
        report_to=[], use_cpu=True,
    )  # fmt: skip
    trainer = Trainer(
        model=tiny_llama(), args=args, train_dataset=FEATURES, data_collator=DataCollator(0)
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "answer_mask"}
    assert batch["answer_mask"].sum().item() == 3
