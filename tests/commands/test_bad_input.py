"""Bad input through every command: exit status 1 or 2, no Python traceback, and a message that
names the offending flag, field, file or line. Each case is what a user could type; the inputs
are built in a temporary folder, and models are a tiny random Llama (nothing downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train._helpers import one_torch_thread, save_tiny_model
from typer.testing import CliRunner

from seglm.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    save_tiny_model(root / "tiny")
    files = {
        "a_file": "not a folder\n",
        "malformed/train.jsonl": '{"prompt": "1+1=", "target": "2"}\n{"prompt": "2+2=", \n',
        "missing/train.jsonl": '{"prompt": "1+1=", "target": "2"}\n{"prompt": "2+2="}\n',
        "wrong_type/train.jsonl": '{"prompt": "1=", "target": "1"}\n{"prompt": 4, "target": "4"}\n',
        "empty/train.jsonl": "",
        "unknown_key.yaml": "task: arith\nlearning_rat: 0.1\n",
        "wrong_type.yaml": "max_steps: many\n",
        "not_yaml.yaml": "task: [arith\n",
        "list.yaml": "- task\n- arith\n",
        "grid_unknown_key.yaml": "tasks: [arith]\nmodels: [m]\nlosses: [ce]\nlambda: [0.6]\n",
        "grid_wrong_type.yaml": "tasks: [arith]\nmodels: [m]\nlosses: [ce]\nseeds: [zero]\n",
        "predictions/bad.jsonl": '{"id": "0", "prediction": "#### 2", "reference": "#### 2"}\n[1\n',
        "predictions/missing.jsonl": '{"id": "0", "reference": "#### 2"}\n',
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "not_utf8").mkdir()
    (root / "not_utf8/train.jsonl").write_bytes(
        b'{"prompt": "1+1=", "target": "2"}\n{"prompt": "caf\xe9", "target": "2"}\n'
    )
    (root / "not_a_model").mkdir()
    (root / "not_a_model/notes.txt").write_text("hello\n")
    (root / "not_a_grid").mkdir()
    (root / "not_a_grid/notes.txt").write_text("hello\n")
    return root


def train(*flags: str) -> list[str]:
    return ["train", "--model", "{tiny}", "--output-dir", "{out}", "--max-steps", "1", *flags]


def train_config(name: str) -> list[str]:
    return ["train", f"{{inputs}}/{name}", *train()[1:]]


def jsonl_train(folder: str) -> list[str]:
    return train("--task", "jsonl", "--task-options", f"path={{inputs}}/{folder}/train.jsonl")


CASES = [
    # seglm train: flags, task options, config files, data files, models
    (train("--task-options", "max_steps=abc"), "option 'max_steps' expects an integer, got 'abc'"),
    (train("--task-options", "operations=*/"), "option 'operations': cannot read value '*/'"),
    (train("--task-options", "no_such=1"), "task 'arith' has no option no_such"),
    (["train", "--output-dir", "{inputs}/a_file"], "a_file is a file, not a folder"),
    (train("--loss", "ce=nan"), "weight of 'ce' must be a finite number >= 0, got nan"),
    (train("--loss", "ce=inf"), "weight of 'ce' must be a finite number >= 0, got inf"),
    (train("--loss", "ce=-1"), "weight of 'ce' must be a finite number >= 0, got -1.0"),
    (train("--loss", "ce=0.6,lovasz"), "'lovasz' has no weight"),
    (train("--loss", "ce=0.6,dice=0.4"), "unknown loss 'dice'"),
    (train("--loss", "lovasz@all=1"), "lovasz is a set loss over the answer's tokens"),
    (train("--lora-dropout", "1.5"), "field 'lora_dropout' must be < 1, got 1.5"),
    (train("--lora-alpha", "0"), "field 'lora_alpha' must be > 0, got 0"),
    (train("--batch-size", "0"), "'batch_size' must be >= 1"),
    (train("--epochs", "0"), "'epochs' must be > 0, got 0"),
    (train("--dtype", "fp64"), "dtype"),
    (train("--task", "arithmetic"), "unknown task 'arithmetic'"),
    (train("--target-modules", "q_proj,no_such_proj"), "no module named 'no_such_proj'"),
    (["train", "--model", "smollm2-135m-instrct"], "did you mean 'smollm2-135m-instruct'"),
    (["train", "--model", "{inputs}/not_a_model"], "not_a_model' holds no model"),
    (train_config("missing.yaml"), "cannot read config file"),
    (train_config("unknown_key.yaml"), "line 2: unknown key 'learning_rat'"),
    (train_config("wrong_type.yaml"), "line 1: field 'max_steps' expects an int"),
    (train_config("not_yaml.yaml"), "not_yaml.yaml: not valid YAML"),
    (train_config("list.yaml"), "list.yaml: expected a mapping of config keys"),
    (train("--preset", "demoo"), "unknown preset 'demoo'; did you mean 'demo'"),
    (jsonl_train("malformed"), "malformed/train.jsonl:2"),
    (jsonl_train("missing"), "missing/train.jsonl:2: field 'target'"),
    (jsonl_train("wrong_type"), "wrong_type/train.jsonl:2: field 'prompt'"),
    (jsonl_train("empty"), "empty/train.jsonl: holds no records"),
    (jsonl_train("not_utf8"), "not_utf8/train.jsonl:2: not UTF-8 text"),
    # seglm eval
    (["eval", "/nonexistent", "--task", "arith"], "model folder '/nonexistent' does not exist"),
    (["eval", "{inputs}/not_a_model", "--task", "arith"], "holds no model (no config.json)"),
    (["eval", "{tiny}", "--task", "arith", "--output-dir", "{inputs}/a_file"], "is a file"),
    (["eval", "{tiny}", "--task", "arith", "--split", "dev"], "no split 'dev'"),
    (["eval", "{tiny}", "--task", "arith", "--scoring", "loglik"], "needs a multiple-choice"),
    (["eval", "{tiny}", "--task", "arith", "--limit", "0"], "limit"),
    (
        ["eval", "{tiny}", "--task", "arith", "--option", "max_steps=x"],
        "option 'max_steps' expects an integer, got 'x'",
    ),
    # seglm compare
    (["compare", "--losses", "ce", "--train", "target_modules=*x", "--dry-run"], "value '*x'"),
    (["compare", "--losses", "ce", "--shard", "3/2", "--dry-run"], "shard must look like i/n"),
    (["compare", "--losses", "ce,focal", "--lambdas", "1.5", "--dry-run"], "λ is the weight"),
    (["compare", "--arm", "control", "--dry-run"], "--arm expects NAME:SPEC"),
    (["compare", "--arm", "x:ce=0.6,lovasz", "--dry-run"], "'lovasz' has no weight"),
    (["compare", "--losses", "ce", "--train", "max_steps=x", "--dry-run"], "'max_steps' expects"),
    (["compare", "{inputs}/grid_unknown_key.yaml", "--dry-run"], "unknown key 'lambda'"),
    (
        ["compare", "{inputs}/grid_wrong_type.yaml", "--dry-run"],
        "grid_wrong_type.yaml: key 'seeds[0]' expects an integer, got 'zero'",
    ),
    (["compare", "{inputs}/missing.yaml", "--dry-run"], "cannot read grid file"),
    (["compare", "--out", "{inputs}/a_file", "--losses", "ce"], "a_file is a file, not a folder"),
    (["compare", "--out", "{inputs}/not_a_grid", "--losses", "ce"], "holds no grid.json"),
    # seglm losses, score, report, data
    (["losses", "ce=nan"], "weight of 'ce' must be a finite number >= 0, got nan"),
    (["losses", "ce=inf"], "weight of 'ce' must be a finite number >= 0, got inf"),
    (["losses", "ce=-1"], "weight of 'ce' must be a finite number >= 0, got -1.0"),
    (["losses", "cee=1"], "unknown loss 'cee'; did you mean 'ce'"),
    (["losses", "ce@prompt=1"], "scope 'prompt' is not one of all, answer"),
    (["score", "gsm8k", "{inputs}/predictions/bad.jsonl"], "bad.jsonl, line 2"),
    (["score", "gsm8k", "{inputs}/predictions/missing.jsonl"], "field 'prediction'"),
    (["score", "gsm8k", "{inputs}/no_such.jsonl"], "no_such.jsonl"),
    (["report", "{inputs}/not_a_grid"], "holds no grid"),
    (["data", "show", "arithmetic"], "unknown task 'arithmetic'"),
    (["data", "show", "arith", "--split", "dev"], "no split 'dev'"),
]


@pytest.mark.parametrize(
    ("args", "message"),
    CASES,
    ids=lambda value: " ".join(value)[:70] if isinstance(value, list) else "",
)
def test_bad_input_gets_a_clear_message(
    inputs: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    names = {"inputs": str(inputs), "tiny": str(inputs / "tiny"), "out": str(tmp_path / "out")}
    argv = [arg.format(**names) for arg in args]
    if argv[0] == "compare" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "runs")]
    if argv[0] == "eval" and "--output-dir" not in argv:
        argv += ["--output-dir", str(tmp_path / "eval")]
    with one_torch_thread():
        result = runner.invoke(app, argv)
    text = " ".join(result.output.replace("│", " ").split())  # rich boxes and wraps lines
    assert result.exit_code in (1, 2), text
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    assert " ".join(message.format(**names).split()) in text


def test_the_suite_covers_every_command() -> None:
    commands = {args[0] for args, _ in CASES}
    assert commands == {"train", "eval", "compare", "losses", "score", "report", "data"}
