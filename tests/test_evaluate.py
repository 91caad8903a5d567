"""seglm.evaluate with a tiny random Llama and the real SmolLM2 tokenizer (one slow test uses the
real model)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from seglm import evaluate as ev
from seglm.config import ConfigError, EvalConfig, TrainConfig, load_run_config, write_config
from seglm.evaluate import EvalError, LoadedModel, evaluate
from seglm.folders import LOCK_FILE
from seglm.metrics import PredictionsFileError
from seglm.models import load_tokenizer, tiny_llama
from seglm.tasks import get_task

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ARITH = {"train_size": 12, "validation_size": 2, "test_size": 6}
FAST = {"task_options": ARITH, "max_new_tokens": 6, "progress": False}
CHOICES = [
    {
        "prompt": "Which animal barks?",
        "choices": ["a dog", "a fish", "a very quiet snail"],
        "label": 0,
    },
    {"prompt": "Pick a colour", "choices": ["red", "seven", "B", "the sky at noon"], "label": 3},
    {"prompt": "Two plus two", "choices": ["four", "five"], "label": "A"},
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A random 2-layer Llama (hidden 32) with SmolLM2's tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def loaded(tokenizer: Any) -> LoadedModel:
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return LoadedModel(model, tokenizer, name="tiny")


@pytest.fixture
def choice_file(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(record) + "\n" for record in CHOICES))
    return path


def choice_options(path: Path) -> dict[str, Any]:
    return {"path": str(path), "choices_field": "choices"}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def count_generated_rows(monkeypatch: pytest.MonkeyPatch, model: Any) -> list[int]:
    """Record the batch size of every model.generate call."""
    rows: list[int] = []
    original = model.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        rows.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    return rows


def greedy_alone(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> str:
    """One prompt, no padding, no stop strings: the reference for batched generation."""
    ids = loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    output = loaded.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
    )
    return loaded.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)


# -- generation and the predictions file ------------------------------------------------------


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    result = evaluate(loaded, "arith", "test", tmp_path, batch_size=4, **FAST)
    records = lines(result.predictions_path)
    assert [r["id"] for r in records] == [f"arith/test/{i}" for i in range(6)]
    prompt_lengths = {len(loaded.tokenizer(r["prompt"])["input_ids"]) for r in records}
    assert len(prompt_lengths) > 1  # the batch really was padded
    examples = get_task("arith", **ARITH).load("test")
    for record, example in zip(records, examples, strict=True):
        assert (record["prompt"], record["reference"]) == (example.prompt, example.reference)
        assert record["prediction"] == greedy_alone(loaded, record["prompt"], 6)
        assert record["finish"] == "length" and record["generated_tokens"] == 6
        assert set(record["metrics"]) >= {"exact_match", "exact_match_flexible", "iou"}


def test_predictions_are_appended_after_every_batch(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    append = ev.append_records

    def watching(path: Path, records: list[dict[str, Any]]) -> None:
        append(path, records)
        seen.append(len(path.read_text().splitlines()))

    monkeypatch.setattr(ev, "append_records", watching)
    evaluate(loaded, "arith", "test", tmp_path, batch_size=2, **FAST)
    assert seen == [2, 4, 6]


def test_generation_stops_at_stop_strings_and_eos(loaded: LoadedModel) -> None:
    task = get_task("gsm8k")
    scorer = ev.Scorer(loaded, task, "generate", max_new_tokens=32)
    tokenizer = loaded.tokenizer
    ids = tokenizer("42 #### 42\nQuestion: what next?", add_special_tokens=False)["input_ids"]
    assert scorer.read_generation(ids) == ev.Generation("42 #### 42", len(ids), "stop")
    short = tokenizer("#### 7", add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert scorer.read_generation([*short, eos, pad]) == ev.Generation("#### 7", len(short), "eos")
    assert scorer.read_generation(short) == ev.Generation("#### 7", len(short), "length")
    assert ev.cut_at_stop("a\nb\nQuestion:", ["\nQuestion:", "\n"]) == 1
    assert ev.cut_at_stop("no stop", ["\nQuestion:"]) is None


def test_metrics_json(loaded: LoadedModel, tmp_path: Path) -> None:
    result = evaluate(loaded, "arith", "test", tmp_path, limit=5, **FAST)
    summary = json.loads(result.metrics_path.read_text())
    per_example = [r["metrics"] for r in lines(result.predictions_path)]
    assert summary["n"] == result.n == 5
    assert (summary["task"], summary["split"], summary["model"]) == ("arith", "test", "tiny")
    assert summary["scoring"] == "generate" and summary["limit"] == 5
    assert summary["task_options"]["test_size"] == 6
    assert summary["max_new_tokens"] == 6 and summary["dtype"] == "fp32"
    for name in ("exact_match", "missing_steps"):
        mean = sum(scores[name] for scores in per_example) / 5
        assert summary["metrics"][name] == pytest.approx(mean)
        assert summary["counts"][name] == 5
    assert sum(summary["finish"].values()) == 5
    assert summary["throughput"]["examples"] == 5
    assert summary["throughput"]["generated_tokens"] == 30


def test_a_config_gives_the_same_evaluation_as_keyword_settings(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    by_keywords = evaluate(loaded, "arith", "test", tmp_path / "a", limit=3, **FAST)
    config = EvalConfig(task="arith", limit=3, task_options=ARITH, max_new_tokens=6)
    by_config = evaluate(loaded, out_dir=tmp_path / "b", config=config, progress=False)
    assert lines(by_config.predictions_path) == lines(by_keywords.predictions_path)
    identity = json.loads((tmp_path / "a" / "eval_config.json").read_text())
    assert json.loads((tmp_path / "b" / "eval_config.json").read_text()) == identity
    # Keyword settings, task and split go over the config's.
    over = evaluate(loaded, None, "validation", tmp_path / "c", config=config, limit=1,
                    progress=False)  # fmt: skip
    summary = json.loads(over.metrics_path.read_text())
    assert (summary["split"], summary["limit"], summary["task"]) == ("validation", 1, "arith")


# -- resuming ----------------------------------------------------------------------------------


def test_rerun_generates_only_the_missing_examples(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluate(loaded, "arith", "test", tmp_path, limit=4, **FAST)
    rows = count_generated_rows(monkeypatch, loaded.model)
    result = evaluate(loaded, "arith", "test", tmp_path, **FAST)
    assert sum(rows) == 2
    assert result.resumed == 4 and result.n == 6
    assert [r["id"] for r in lines(result.predictions_path)] == [
        f"arith/test/{i}" for i in range(6)
    ]
    evaluate(loaded, "arith", "test", tmp_path, **FAST)
    assert sum(rows) == 2  # all done: nothing generated


def test_interrupted_evaluation_resumes_and_loses_nothing(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = evaluate(loaded, "arith", "test", tmp_path / "whole", batch_size=2, **FAST)
    calls = []
    generate = loaded.model.generate

    def crash_on_second_batch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "generate", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(loaded, "arith", "test", tmp_path / "cut", batch_size=2, **FAST)
    assert len(lines(tmp_path / "cut" / "predictions.jsonl")) == 2
    resumed = evaluate(loaded, "arith", "test", tmp_path / "cut", batch_size=2, **FAST)
    assert len(calls) == 4  # two more batches after the crash
    assert lines(resumed.predictions_path) == lines(uninterrupted.predictions_path)
    assert resumed.metrics == uninterrupted.metrics


def test_torn_last_line_is_dropped_with_a_warning(
    loaded: LoadedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = evaluate(loaded, "arith", "test", tmp_path, limit=3, **FAST)
    text = result.predictions_path.read_text()
    last = text.splitlines()[-1]
    result.predictions_path.write_text(text[: -len(last) - 1] + last[: len(last) // 2])
    rows = count_generated_rows(monkeypatch, loaded.model)
    with caplog.at_level(logging.WARNING, logger="seglm.evaluate"):
        evaluate(loaded, "arith", "test", tmp_path, limit=3, **FAST)
    assert "line 3: dropped a line torn by an interrupted write" in caplog.text
    assert sum(rows) == 1
    assert result.predictions_path.read_text() == text


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: "{not json\n", "line 2: not valid JSON"),
        (lambda r: json.dumps({k: v for k, v in r.items() if k != "prediction"}) + "\n",
         "line 2: missing field 'prediction'"),
        (lambda r: json.dumps({**r, "metrics": [1]}) + "\n",
         "line 2: field 'metrics' must be a dict, got list"),
    ],
)  # fmt: skip
def test_bad_line_in_predictions_is_an_error_naming_it(
    loaded: LoadedModel, tmp_path: Path, damage: Any, message: str
) -> None:
    result = evaluate(loaded, "arith", "test", tmp_path, limit=3, **FAST)
    text = result.predictions_path.read_text().splitlines(keepends=True)
    text[1] = damage(json.loads(text[1]))
    result.predictions_path.write_text("".join(text))
    with pytest.raises(PredictionsFileError, match=message):
        evaluate(loaded, "arith", "test", tmp_path, limit=3, **FAST)


def test_a_rerun_repairs_duplicate_predictions_that_agree(
    loaded: LoadedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What two evaluations appending into one folder left before the folder was locked.
    result = evaluate(loaded, "arith", "test", tmp_path, limit=3, **FAST)
    text = result.predictions_path.read_text()
    first, second, third = text.splitlines(keepends=True)
    stale = json.loads(second)
    stale["metrics"] = {"exact_match": 1.0}  # metrics are recomputed: they may differ
    result.predictions_path.write_text(first + second + first + json.dumps(stale) + "\n" + third)
    rows = count_generated_rows(monkeypatch, loaded.model)
    with caplog.at_level(logging.WARNING, logger="seglm.evaluate"):
        evaluate(loaded, "arith", "test", tmp_path, limit=3, **FAST)
    assert "line 3: skipped a duplicate of line 1 (id 'arith/test/0', same prediction)" in (
        caplog.text
    )
    assert "line 4: skipped a duplicate of line 2" in caplog.text
    assert not rows  # nothing generated again
    assert result.predictions_path.read_text() == text
    # Two different predictions for one id: which one holds is the user's call.
    other = json.loads(first)
    other["prediction"] += " and more"
    result.predictions_path.write_text(text + json.dumps(other) + "\n")
    message = r"line 4: id 'arith/test/0' is also on line 1, with another prediction; keep one"
    with pytest.raises(PredictionsFileError, match=message):
        evaluate(loaded, "arith", "test", tmp_path, limit=3, **FAST)


HOLDER = """
import sys, time
from pathlib import Path
from seglm.evaluate import output_lock
with output_lock(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("held")
    time.sleep(120)
"""


def test_a_folder_another_evaluation_holds_is_refused_at_once(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    # Another process holds it (within one process the lock is re-entrant).
    ready = tmp_path.parent / f"{tmp_path.name}-ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), str(ready)])
    try:
        while not ready.exists():
            assert holder.poll() is None, "the holder died"
        with pytest.raises(EvalError, match=r"is in use by another evaluation \(pid [0-9]+ on "):
            evaluate(loaded, "arith", "test", tmp_path, limit=2, **FAST)
        assert not (tmp_path / "predictions.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # Released: a lock file left behind (as by a killed process) blocks no one.
    assert (tmp_path / LOCK_FILE).is_file()
    assert evaluate(loaded, "arith", "test", tmp_path, limit=2, **FAST).n == 2


def test_a_file_system_without_locks_evaluates_with_a_warning(
    loaded: LoadedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import errno
    import fcntl

    def no_locks(*args: Any) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="seglm.evaluate"):
        assert evaluate(loaded, "arith", "test", tmp_path, limit=2, **FAST).n == 2
    assert "cannot lock it ([Errno 37] No locks available); a second evaluation" in caplog.text


def test_other_settings_in_the_same_folder_are_refused(loaded: LoadedModel, tmp_path: Path) -> None:
    evaluate(loaded, "arith", "test", tmp_path, limit=2, **FAST)
    with pytest.raises(EvalError, match=r"max_new_tokens: 6 -> 7.*--overwrite"):
        evaluate(loaded, "arith", "test", tmp_path, limit=2, **{**FAST, "max_new_tokens": 7})
    result = evaluate(
        loaded, "arith", "test", tmp_path, limit=2, overwrite=True, **{**FAST, "max_new_tokens": 7}
    )
    assert result.resumed == 0
    assert {r["generated_tokens"] for r in lines(result.predictions_path)} == {7}


def test_random_subset_is_seeded(loaded: LoadedModel, tmp_path: Path) -> None:
    options = {**FAST, "task_options": {**ARITH, "test_size": 40}, "max_new_tokens": 1}

    def subset(name: str, seed: int) -> list[str]:
        out = tmp_path / name
        evaluate(loaded, "arith", "test", out, limit=4, random_subset=True, seed=seed, **options)
        return [record["id"] for record in lines(out / "predictions.jsonl")]

    picked = [subset("a", 3), subset("b", 3), subset("c", 4)]
    assert picked[0] == picked[1] != picked[2]
    assert picked[0] != [f"arith/test/{i}" for i in range(4)]
    indices = [int(i.rsplit("/", 1)[1]) for i in picked[0]]
    assert indices == sorted(indices)  # dataset order


def test_out_of_memory_halves_the_batch() -> None:
    requests = [ev.Request(ev.Example(str(i), "", "", "", ""), "", [1] * i) for i in range(1, 8)]
    sizes: list[int] = []

    def score(batch: Any, size: int) -> tuple[list[dict[str, Any]], int]:
        sizes.append(len(batch))
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return [{"id": r.example.id} for r in batch], 0

    written: list[str] = []
    throughput = ev.run_batches(requests, 8, score, lambda rs: written.extend(r["id"] for r in rs))
    assert sizes == [7, 4, 2, 2, 2, 1]
    assert written == ["7", "6", "5", "4", "3", "2", "1"]  # longest first
    assert throughput.examples == 7

    def broken(batch: Any, size: int) -> tuple[list[dict[str, Any]], int]:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        ev.run_batches(requests, 8, broken, lambda rs: None)


# -- few-shot ---------------------------------------------------------------------------------


def test_fewshot_exemplars_come_from_train_seeded_per_example(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    task = get_task("arith", **ARITH)
    train = {e.prompt + e.reference for e in task.load("train")}
    first = evaluate(loaded, "arith", "test", tmp_path / "a", num_fewshot=2, limit=3, **FAST)
    prompts = [r["prompt"] for r in lines(first.predictions_path)]
    for prompt, example in zip(prompts, task.load("test", limit=3), strict=True):
        *shots, question = prompt.split("\n\n")
        assert question == example.prompt
        assert len(shots) == 2 and all(shot in train for shot in shots)
    again = evaluate(loaded, "arith", "test", tmp_path / "b", num_fewshot=2, limit=2, **FAST)
    assert [r["prompt"] for r in lines(again.predictions_path)] == prompts[:2]
    with pytest.raises(EvalError, match="few-shot exemplars come from the 'train' split"):
        evaluate(loaded, "arith", "train", tmp_path / "c", num_fewshot=2, **FAST)


def test_chat_template_wraps_the_prompt(loaded: LoadedModel, tmp_path: Path) -> None:
    result = evaluate(loaded, "arith", "test", tmp_path / "a", chat_template=True, limit=1, **FAST)
    prompt = lines(result.predictions_path)[0]["prompt"]
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("have now?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(EvalError, match="cannot be combined with the chat template"):
        evaluate(loaded, "arith", "test", tmp_path / "b", chat_template=True, num_fewshot=1, **FAST)


# -- log-likelihood scoring -------------------------------------------------------------------


def test_acc_and_acc_norm_follow_lm_eval() -> None:
    loglik = {"choices": ["a long answer here", "B", "abc"], "logliks": [-10.0, -3.0, -12.0]}
    # acc: the highest log-likelihood (B); acc_norm: the highest per character (-10/18).
    assert ev.loglik_metrics({**loglik, "gold": 0}) == {"acc": 0.0, "acc_norm": 1.0}
    assert ev.loglik_metrics({**loglik, "gold": 1}) == {"acc": 1.0, "acc_norm": 0.0}


def test_loglik_scores_each_choice_as_a_continuation(
    loaded: LoadedModel, tmp_path: Path, choice_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log-likelihoods given by the choice text: acc, acc_norm and the predicted letter follow."""
    preferred = {"a fish": -1.0, "a very quiet snail": -2.0, "the sky at noon": -30.0,
                 "four": -5.0, "five": -4.0}  # fmt: skip
    tokenizer = loaded.tokenizer

    def fake(self: Any, pairs: Any) -> list[float]:
        return [preferred.get(tokenizer.decode(cont).strip(), -20.0) for _, cont in pairs]

    monkeypatch.setattr(ev.Scorer, "pair_logliks", fake)
    result = evaluate(loaded, "jsonl", "test", tmp_path / "eval", scoring="loglik", batch_size=3,
                      task_options=choice_options(choice_file), progress=False)  # fmt: skip
    records = lines(result.predictions_path)
    assert [r["loglik"]["logliks"] for r in records] == [
        [-20.0, -1.0, -2.0], [-20.0, -20.0, -20.0, -30.0], [-5.0, -4.0]
    ]  # fmt: skip
    assert [r["prediction"] for r in records] == ["B", "A", "B"]
    assert [r["prompt"] for r in records] == [c["prompt"] for c in CHOICES]
    # acc_norm: -2/18 beats -1/6 (example 1); -30/15 beats -20/3, -20/5, -20/1 (example 2).
    assert [r["metrics"] for r in records] == [
        {"acc": 0.0, "acc_norm": 0.0}, {"acc": 0.0, "acc_norm": 1.0}, {"acc": 0.0, "acc_norm": 0.0}
    ]  # fmt: skip
    assert result.metrics == {"acc": 0.0, "acc_norm": pytest.approx(1 / 3)}


def test_loglik_values_equal_an_unbatched_forward_pass(
    loaded: LoadedModel, tmp_path: Path, choice_file: Path
) -> None:
    result = evaluate(loaded, "jsonl", "test", tmp_path / "eval", scoring="both", batch_size=2,
                      max_new_tokens=3, task_options=choice_options(choice_file),
                      progress=False)  # fmt: skip
    tokenizer = loaded.tokenizer
    for record, source in zip(lines(result.predictions_path), CHOICES, strict=True):
        assert record["prompt"].startswith(f"Question: {source['prompt']}\nA. ")
        assert record["loglik"]["context"] == source["prompt"]
        context = tokenizer(source["prompt"], add_special_tokens=False)["input_ids"]
        expected = []
        for choice in source["choices"]:
            whole = tokenizer(source["prompt"] + " " + choice, add_special_tokens=False)
            ids = torch.tensor([whole["input_ids"]])
            with torch.no_grad():
                logprobs = torch.log_softmax(loaded.model(ids).logits[0].float(), dim=-1)
            expected.append(
                sum(logprobs[t - 1, ids[0, t]].item() for t in range(len(context), ids.shape[1]))
            )
        assert record["loglik"]["logliks"] == pytest.approx(expected, abs=1e-4)
        assert {"exact_match", "acc", "acc_norm"} == set(record["metrics"])
        assert record["finish"] in ("stop", "eos", "length")


def test_loglik_needs_a_choice_task(loaded: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="scoring 'loglik' needs a multiple-choice task"):
        evaluate(loaded, "arith", "test", tmp_path, scoring="loglik", **FAST)


def test_lm_eval_pair_encoding_moves_trailing_spaces() -> None:
    class Characters:
        """One token per character, no special tokens."""

        bos_token = None

        def __call__(self, texts: Any, add_special_tokens: bool = True) -> dict[str, Any]:
            if isinstance(texts, str):
                return {"input_ids": [ord(c) for c in texts]}
            return {"input_ids": [[ord(c) for c in text] for text in texts]}

    pairs = ev.encode_pairs(Characters(), "Q: sky ", [" blue", "red"])
    assert pairs == (
        ([ord(c) for c in "Q: sky"], [ord(c) for c in "  blue"]),
        ([ord(c) for c in "Q: sky"], [ord(c) for c in " red"]),
    )


# -- models and run folders -------------------------------------------------------------------


def make_run_folder(
    folder: Path, tiny_dir: Path, tokenizer: Any, task: str = "arith", weights: bool = True
) -> Path:
    """A run folder as seglm.train leaves it: config.yaml, a LoRA adapter, the tokenizer."""
    folder.mkdir()
    config = TrainConfig(model=str(tiny_dir), task=task, task_options=ARITH, output_dir=str(folder))
    write_config(config, folder / "config.yaml")
    if weights:
        from peft import LoraConfig, get_peft_model

        from seglm.models import load_model

        torch.manual_seed(1)
        lora = LoraConfig(
            r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
        )
        get_peft_model(load_model(str(tiny_dir)), lora).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "train_report.json").write_text("{}")
    return folder


def test_run_folder_with_lora_adapter(tiny_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", tiny_dir, tokenizer)
    result = evaluate(run, None, "test", tmp_path / "eval", max_new_tokens=6, progress=False)
    summary = json.loads(result.metrics_path.read_text())
    assert summary["task"] == "arith" and summary["task_options"]["test_size"] == 6  # the run's
    assert summary["model"] == str(run) and summary["adapter"] == str(run)
    from peft import PeftModel

    from seglm.models import load_model

    base = load_model(str(tiny_dir)).eval()
    with_adapter = PeftModel.from_pretrained(load_model(str(tiny_dir)), str(run)).eval()
    record = lines(result.predictions_path)[0]
    adapted = greedy_alone(LoadedModel(with_adapter, tokenizer), record["prompt"], 6)
    assert record["prediction"] == adapted
    assert adapted != greedy_alone(LoadedModel(base, tokenizer), record["prompt"], 6)
    # A checkpoint (adapter, no config.yaml) takes the task and base model from its run.
    checkpoint = run / "checkpoint-4"
    shutil.copytree(run, checkpoint, ignore=shutil.ignore_patterns("config.yaml", "checkpoint-*"))
    from_checkpoint = evaluate(checkpoint, None, "test", tmp_path / "ckpt", max_new_tokens=6,
                               limit=1, progress=False)  # fmt: skip
    assert lines(from_checkpoint.predictions_path)[0]["prediction"] == adapted
    assert json.loads(from_checkpoint.metrics_path.read_text())["task_options"]["test_size"] == 6


def test_a_run_source_with_its_config_needs_no_config_yaml(
    tiny_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    # What a grid's runner does: it hands evaluation the run's config, as it trained it.
    run = make_run_folder(tmp_path / "run", tiny_dir, tokenizer)
    expected = evaluate(
        run, None, "test", tmp_path / "a", max_new_tokens=6, limit=2, progress=False
    )
    config = load_run_config(run)
    (run / "config.yaml").unlink()
    source = ev.run_source(run, config)
    settings = EvalConfig(task="arith", task_options=config.task_options, max_new_tokens=6, limit=2)
    result = evaluate(source, out_dir=tmp_path / "b", config=settings, progress=False)
    assert lines(result.predictions_path) == lines(expected.predictions_path)
    identity = json.loads((tmp_path / "a" / "eval_config.json").read_text())
    assert json.loads((tmp_path / "b" / "eval_config.json").read_text()) == identity


def test_run_folder_without_weights(tiny_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", tiny_dir, tokenizer, weights=False)
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    save_file({"w": torch.zeros(2)}, run / "checkpoint-2" / "adapter_model.safetensors")
    (run / "checkpoint-4").mkdir()  # a save cut short: not worth suggesting
    with pytest.raises(EvalError) as error:
        evaluate(run, None, "test", tmp_path / "eval", progress=False)
    message = str(error.value)
    assert f"run folder {run} has no weights at its root" in message
    assert "training has not finished" in message
    assert message.endswith(f"a checkpoint can be evaluated instead, e.g. {run / 'checkpoint-2'}")


def test_task_that_does_not_match_the_run(
    tiny_dir: Path, tokenizer: Any, tmp_path: Path, choice_file: Path
) -> None:
    run = make_run_folder(tmp_path / "run", tiny_dir, tokenizer)
    options = choice_options(choice_file)
    with pytest.raises(EvalError, match=r"trained on 'arith' \(answers in format 'gsm8k'\)"):
        evaluate(run, "jsonl", "test", tmp_path / "a", task_options=options, progress=False)
    result = evaluate(run, "jsonl", "test", tmp_path / "b", task_options=options, scoring="loglik",
                      allow_task_mismatch=True, progress=False)  # fmt: skip
    assert result.n == 3


def test_unknown_task_and_bad_arguments(loaded: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'arihm' \\(did you mean 'arith'"):
        evaluate(loaded, "arihm", "test", tmp_path, progress=False)
    with pytest.raises(ValueError, match="no split 'tset'"):
        evaluate(loaded, "arith", "tset", tmp_path, progress=False)
    with pytest.raises(EvalError, match="no task given"):
        evaluate(loaded, None, "test", tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"scoring='sample' is not one of .*'loglik'"):
        evaluate(loaded, "arith", "test", tmp_path, scoring="sample", progress=False)
    with pytest.raises(EvalError, match="adapter goes with a model name"):
        evaluate(loaded, "arith", "test", tmp_path, adapter=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="field 'limit' must be >= 1, got 0"):
        evaluate(loaded, "arith", "test", tmp_path, limit=0, progress=False)
    with pytest.raises(ConfigError, match="random_subset draws limit examples: give a limit"):
        evaluate(loaded, "arith", "test", tmp_path, random_subset=True, progress=False)
    with pytest.raises(ConfigError, match="evaluate: unknown key 'limt'; did you mean 'limit'"):
        evaluate(loaded, "arith", "test", tmp_path, limt=3, progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: holds no records"):
        evaluate(loaded, "jsonl", "empty", tmp_path, task_options={"path": str(empty)})


def test_reference_without_an_answer_fails_before_generating(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "test.jsonl"
    records = [{"prompt": "1+1?", "target": "#### 2"}, {"prompt": "2+2?", "target": "#### four"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = count_generated_rows(monkeypatch, loaded.model)
    options = {"path": str(data), "answer_format": "gsm8k"}
    with pytest.raises(EvalError, match=r"example jsonl/test/1: reference has no '#### <number>'"):
        evaluate(loaded, "jsonl", "test", tmp_path / "eval", task_options=options, progress=False)
    assert rows == []


def test_tokenizer_that_does_not_fit_the_model(tokenizer: Any) -> None:
    small = tiny_llama(vocab_size=128, hidden_size=32)
    with pytest.raises(EvalError, match="tokenizer has 49152 tokens but model m embeds only 128"):
        ev.check_vocabulary(small, tokenizer, "m")


# -- the real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_on_gsm8k_and_openbookqa(tmp_path: Path) -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the offline datasets are not at {SHARED_DATA}")
    loaded = ev.load_for_eval("smollm2-135m-instruct")
    gsm8k = evaluate(loaded, "gsm8k", "test", tmp_path / "gsm8k", limit=4, max_new_tokens=48,
                     data_dir=str(SHARED_DATA), progress=False)  # fmt: skip
    records = lines(gsm8k.predictions_path)
    assert len(records) == 4 and all(r["prediction"].strip() for r in records)
    # Measured: three of the four answers end with EOS ("... The answer is: 42").
    assert sum(r["finish"] == "eos" for r in records) >= 2
    obqa = evaluate(loaded, "openbookqa", "test", tmp_path / "obqa", limit=8, scoring="loglik",
                    data_dir=str(SHARED_DATA), progress=False)  # fmt: skip
    records = lines(obqa.predictions_path)
    assert all(-100 < v < 0 for r in records for v in r["loglik"]["logliks"])
    # The batched, left-padded scores equal a forward pass over each pair alone.
    first = records[0]["loglik"]
    tokenizer = loaded.tokenizer
    context = tokenizer(first["context"], add_special_tokens=False)["input_ids"]
    alone = []
    for choice in first["choices"]:
        ids = tokenizer(first["context"] + " " + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0], dim=-1)
        alone.append(sum(logprobs[t - 1, ids[t]].item() for t in range(len(context), len(ids))))
    assert first["logliks"] == pytest.approx(alone, abs=1e-3)


def test_roscoe_scores_join_predictions_and_metrics_once(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seglm.metrics import roscoe as roscoe_module
    from seglm.metrics.roscoe import RoscoeConfig

    config = RoscoeConfig(families=("semantic_similarity",), progress=False)
    evaluate(loaded, "arith", "test", tmp_path, limit=3, roscoe=config, **FAST)
    records = lines(tmp_path / "predictions.jsonl")
    assert all(set(r["roscoe"]) == {"info_chain", "repetition_step"} for r in records)
    assert all(r["metrics"]["info_chain"] == r["roscoe"]["info_chain"] for r in records)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["counts"]["info_chain"] == sum(
        r["roscoe"]["info_chain"] is not None for r in records
    )
    assert summary["roscoe"]["scores"] == ["info_chain", "repetition_step"]

    # A rerun (resume) scores nothing again: every record already has its ROSCOE scores.
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("ROSCOE recomputed on resume")

    monkeypatch.setattr(roscoe_module, "add_roscoe_scores", refuse)
    evaluate(loaded, "arith", "test", tmp_path, limit=3, roscoe=config, **FAST)
    assert lines(tmp_path / "predictions.jsonl") == records
