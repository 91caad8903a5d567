from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seglm.cli import app

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def no_data_dir_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGLM_DATA_DIR", raising=False)


def run(*args: str) -> object:
    return CliRunner().invoke(app, ["data", *args])


def test_show_prints_json_lines_with_prompt_and_target() -> None:
    result = run(
        "show", "arith", "--split", "validation", "--limit", "3", "--json", "-o", "test_size=5"
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert all(row["prompt"].startswith("Question: ") and "####" in row["target"] for row in rows)
    assert rows[0]["id"] == "arith/validation/0"


def test_show_options_change_the_target() -> None:
    result = run("show", "arith", "-n", "1", "--json", "-o", "target=full", "-o", "max_steps=2")
    row = json.loads(result.stdout)
    assert row["target"] == row["reference"] and row["target"].count("<<") == 2


def test_show_reads_a_data_dir_and_prints_readable_text() -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the offline datasets are not at {SHARED_DATA}")
    result = run("show", "gsm8k", "--split", "test", "-n", "1", "--data-dir", str(SHARED_DATA))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("── gsm8k/test/0 ──\nprompt:\nQuestion: Janet’s ducks")
    assert "target: <<16-3-4=9>> <<9*2=18>> #### 18" in result.stdout


def test_stats_reports_counts_and_token_lengths(tmp_path: Path) -> None:
    lines = [
        {"prompt": "Say hi", "target": "hi"},
        {"prompt": "Say a long thing " * 20, "target": "ok"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = run(
        "stats",
        "jsonl",
        "--split",
        "train",
        "--data-dir",
        str(tmp_path),
        "--max-length",
        "32",
        "--json",
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["examples"] == 2 and stats["kept"] == 2 and stats["truncated"] == 1
    assert stats["dropped"] == 0 and stats["skipped"] == {}
    assert stats["model"] == "smollm2-135m-instruct" and stats["max_length"] == 32
    assert stats["tokens"]["answer"]["max"] == 2  # "hi" / "ok" and EOS
    assert stats["tokens"]["total"]["max"] > 32


def test_stats_counts_skipped_records(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"prompt": "p", "target": "t"}\n{"prompt": "p"}\n')
    result = run(
        "stats",
        "jsonl",
        "-s",
        "train",
        "--data-dir",
        str(tmp_path),
        "-o",
        "on_error=skip",
        "--json",
    )
    assert json.loads(result.stdout)["skipped"] == {"missing field": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "gsm8"], "error: unknown task 'gsm8' (did you mean 'gsm8k'?)"),
        (["show", "arith", "-o", "steps=3"], "error: task 'arith' has no option 'steps'"),
        (["show", "arith", "--split", "dev"], "error: task 'arith' has no split 'dev'"),
        (
            ["show", "gsm8k", "--data-dir", "/nonexistent"],
            "error: data dir /nonexistent (from --data-dir)",
        ),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message)


def test_bad_record_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text('{"prompt": "p", "target": "t"}\n{"prompt": "p"\n')
    result = run("show", "jsonl", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert f"{tmp_path / 'test.jsonl'}:2: malformed JSON" in result.stderr


def test_show_with_the_chat_template_of_the_model() -> None:
    result = run(
        "show", "arith", "-n", "1", "--json", "-o", "prompt_style=chat", "-o", "test_size=3"
    )
    assert result.exit_code == 0, result.output
    prompt = json.loads(result.stdout)["prompt"]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
