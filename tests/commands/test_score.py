import json
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from typer.testing import CliRunner

from seglm.cli import app
from seglm.commands.score import AnswerFormat
from seglm.metrics import ANSWER_FORMATS
from seglm.tasks.base import question_prompt

runner = CliRunner()

# Line 1: perfect. Line 2: right answer, steps 2*3 for 3*2 (equal only up to commutativity) and a
# missing step. Line 3: no answer marker, and a reference without formulas (steps not applicable).
GSM8K_LINES = [
    {
        "prediction": "<<48/2=24>> <<48+24=72>> #### 72",
        "reference": "<<48/2=24>> <<48+24=72>> #### 72",
    },
    {"prediction": "<<2*3=6>> #### -5", "reference": "<<3*2=6>> <<6-11=-5>> #### -5"},
    {"prediction": "I don't know", "reference": "It is 1,000.\n#### 1,000"},
]


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _plain(output: str) -> str:
    """The output without rich's error box and line wrapping."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", output)


def test_format_choices_are_the_metrics_formats() -> None:
    assert tuple(member.value for member in AnswerFormat) == ANSWER_FORMATS


def test_json_output(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", GSM8K_LINES)
    result = runner.invoke(app, ["score", "gsm8k", str(path), "--format", "gsm8k", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 3
    metrics = report["metrics"]
    assert metrics["exact_match"] == pytest.approx(2 / 3)
    # Step metrics are averaged over lines 1 and 2 only.
    assert report["counts"]["iou"] == 2
    assert metrics["iou"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["real_iou"] == pytest.approx((1.0 + 1 / 2) / 2)
    assert metrics["extra_steps"] == pytest.approx((0.0 + 1 / 2) / 2)
    assert metrics["missing_steps"] == pytest.approx((0.0 + 1.0) / 2)
    assert metrics["inverted_operands"] == 0.0


def test_per_example_file(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", GSM8K_LINES)
    out = tmp_path / "per_example.jsonl"
    result = runner.invoke(
        app, ["score", "gsm8k", str(path), "--format", "gsm8k", "--per-example", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["line"] for row in rows] == [1, 2, 3]
    assert [row["exact_match"] for row in rows] == [1.0, 1.0, 0.0]
    assert rows[1]["real_iou"] == 0.5
    assert rows[2]["iou"] is None


def test_table_output(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", GSM8K_LINES)
    result = runner.invoke(app, ["score", "gsm8k", str(path), "--format", "gsm8k"])
    assert result.exit_code == 0, result.output
    assert re.search(r"exact_match\s*│\s*0\.6667\s*│\s*3", result.output)
    assert re.search(r"real_iou\s*│\s*0\.7500\s*│\s*2", result.output)


def test_choice_format(tmp_path: Path) -> None:
    records = [{"prediction": "D. plants", "reference": "D"}, {"prediction": "A", "reference": "B"}]
    path = _write_jsonl(tmp_path / "p.jsonl", records)
    result = runner.invoke(app, ["score", "obqa", str(path), "--format", "choice", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"] == {"exact_match": 0.5}


def test_lm_eval_answer_match(tmp_path: Path) -> None:
    records = [
        {"prediction": "#### - 10", "reference": "So -10.\n#### -10"},  # seglm: -10
        {"prediction": "#### 1,8", "reference": "So 18.\n#### 18"},  # lm-eval: "18"
        {"prediction": "<<9*8=72>> #### $72", "reference": "So <<9*8=72>>72.\n#### 72"},
    ]
    path = _write_jsonl(tmp_path / "p.jsonl", records)
    command = ["score", "gsm8k", str(path), "--format", "gsm8k", "--json"]
    seglm = json.loads(runner.invoke(app, command).stdout)
    lm_eval = json.loads(runner.invoke(app, [*command, "--answer-match", "lm-eval"]).stdout)
    assert (seglm["answer_match"], lm_eval["answer_match"]) == ("seglm", "lm-eval")
    assert seglm["metrics"]["exact_match"] == pytest.approx(2 / 3)
    assert seglm["metrics"]["exact_match_flexible"] == pytest.approx(2 / 3)
    assert lm_eval["metrics"]["exact_match"] == pytest.approx(1 / 3)
    assert lm_eval["metrics"]["exact_match_flexible"] == pytest.approx(2 / 3)
    assert lm_eval["metrics"]["iou"] == seglm["metrics"]["iou"]  # step metrics are seglm's
    choice = _write_jsonl(tmp_path / "c.jsonl", [{"prediction": "A", "reference": "A"}])
    refused = runner.invoke(
        app, ["score", "obqa", str(choice), "--format", "choice", "--answer-match", "lm-eval"]
    )
    assert refused.exit_code != 0
    assert "for the gsm8k answer format only" in _plain(refused.output)


def test_broken_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GSM8K_LINES[0]) + "\n{not json\n", encoding="utf-8")
    result = runner.invoke(app, ["score", "gsm8k", str(path), "--format", "gsm8k"])
    assert result.exit_code != 0
    assert "line 2: not valid JSON" in _plain(result.output)


def test_missing_field_is_named(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [GSM8K_LINES[0], {"prediction": "#### 1"}])
    result = runner.invoke(app, ["score", "gsm8k", str(path), "--format", "gsm8k"])
    assert result.exit_code != 0
    assert "line 2: missing field 'reference'" in _plain(result.output)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    result = runner.invoke(app, ["score", "gsm8k", str(path), "--format", "gsm8k"])
    assert result.exit_code != 0
    assert "holds no predictions" in _plain(result.output)


def test_reference_without_marker(tmp_path: Path) -> None:
    records = [GSM8K_LINES[0], GSM8K_LINES[1], {"prediction": "#### 3", "reference": "It is 3."}]
    path = _write_jsonl(tmp_path / "p.jsonl", records)
    result = runner.invoke(app, ["score", "gsm8k", str(path), "--format", "gsm8k", "--json"])
    assert result.exit_code != 0
    assert "line 3: reference has no '#### <number>' answer" in _plain(result.output)


def _fake_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    def get_task(name: str, **options: object) -> SimpleNamespace:
        formats = {"gsm8k": "gsm8k", "openbookqa": "choice"}
        if name not in formats:
            raise KeyError(f"no task named {name!r}")
        return SimpleNamespace(answer_format=formats[name])

    module = ModuleType("seglm.tasks")
    module.get_task = get_task  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "seglm.tasks", module)


def test_task_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tasks(monkeypatch)
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prediction": "C", "reference": "C"}])
    result = runner.invoke(app, ["score", "openbookqa", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"] == {"exact_match": 1.0}


def test_unknown_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tasks(monkeypatch)
    path = _write_jsonl(tmp_path / "p.jsonl", GSM8K_LINES)
    result = runner.invoke(app, ["score", "gsm9k", str(path)])
    assert result.exit_code != 0
    assert "unknown task 'gsm9k'" in _plain(result.output)


def test_without_tasks_module_asks_for_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "seglm.tasks", None)  # makes the import fail
    path = _write_jsonl(tmp_path / "p.jsonl", GSM8K_LINES)
    result = runner.invoke(app, ["score", "gsm8k", str(path)])
    assert result.exit_code != 0
    assert "pass --format" in _plain(result.output)


def test_roscoe_scores_and_correlations_with_the_offline_embedding_model(tmp_path: Path) -> None:
    """A prediction that answers another question is less faithful to its source, given as
    'source' or in seglm eval's 'prompt'."""
    gsm8k = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k" / "test.jsonl"
    if not gsm8k.is_file():
        pytest.skip(f"{gsm8k} is missing")
    rows = [json.loads(line) for line in gsm8k.read_text().splitlines()[:4]]
    lines = [
        {"prediction": row["answer"], "reference": row["answer"], "source": row["question"]}
        for row in rows[:2]
    ] + [
        {"prediction": rows[3 - i]["answer"], "reference": row["answer"], "source": row["question"]}
        for i, row in enumerate(rows[2:])
    ]
    for line in lines[1::2]:  # as seglm eval writes it: the prompt, not the bare question
        line["prompt"] = question_prompt(line.pop("source"))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    per_example, correlations = tmp_path / "per_example.jsonl", tmp_path / "correlations.json"
    result = CliRunner().invoke(
        app,
        [
            "score",
            "gsm8k",
            str(predictions),
            "--format",
            "gsm8k",
            "--roscoe",
            "--roscoe-families",
            "semantic_similarity",
            "--per-example",
            str(per_example),
            "--correlations",
            str(correlations),
        ],
    )
    assert result.exit_code == 0, result.output
    scores = [json.loads(line) for line in per_example.read_text().splitlines()]
    assert {"info_chain", "repetition_step"} <= scores[0].keys()
    assert "faithfulness_step" not in scores[0]  # family not asked for
    own, swapped = [s["info_chain"] for s in scores[:2]], [s["info_chain"] for s in scores[2:]]
    assert min(own) > max(swapped)
    pairs = json.loads(correlations.read_text())["pairs"]
    info_vs_em = next(p for p in pairs if {p["x"], p["y"]} == {"info_chain", "exact_match"})
    assert info_vs_em["n"] == 4 and info_vs_em["r"] > 0.9


def test_roscoe_needs_the_question(tmp_path: Path) -> None:
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"prediction": "#### 1", "reference": "#### 1"}) + "\n")
    result = CliRunner().invoke(
        app, ["score", "gsm8k", str(predictions), "--format", "gsm8k", "--roscoe"]
    )
    assert result.exit_code != 0
    assert "line 1" in result.output and "source" in result.output
