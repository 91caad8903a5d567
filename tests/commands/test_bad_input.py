"""Bad input through every command: exit status 1 or 2, no Python traceback, and a message that
names the offending flag, field, file or line. Each case is what a user could type; the inputs
are built in a temporary folder, and models are a tiny random Llama (nothing downloads)."""

from __future__ import annotations

import datetime
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from train._helpers import one_torch_thread, save_tiny_model
from typer.testing import CliRunner

from seglm.cli import app

runner = CliRunner()
ARCHIVE = Path(__file__).resolve().parents[2] / "results" / "arith-3seeds.tar.gz"


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
    binary = {
        "latin1.yaml": b"task: arith\nrun_name: caf\xe9\n",
        "binary.yaml": b"\x00\x01\x02\xff",
        "grid_latin1.yaml": b"tasks: [arith]\nmodels: [caf\xe9]\nlosses: [ce]\n",
        "grid_binary.yaml": b"\x89PNG\r\n\x1a\n\x00\x00",
    }
    for name, data in binary.items():
        (root / name).write_bytes(data)
    more = {
        "twice.yaml": "seed: 1\nlearning_rate: 0.01\nseed: 2\n",
        "int_key.yaml": "task: arith\n3: x\n",
        "grid_twice.yaml": "tasks: [arith]\nmodels: [m]\nlosses: [ce]\nlosses: [focal]\n",
        "grid_train_list.yaml": "tasks: [arith]\nmodels: [m]\nlosses: [ce]\ntrain: [lr]\n",
        "grid_eval_list.yaml": "tasks: [arith]\nmodels: [m]\nlosses: [ce]\neval: [limit]\n",
        "grid_escape.yaml": "tasks: [../../escape]\nmodels: [m]\nlosses: [ce]\n",
        "surrogate/train.jsonl": '{"prompt": "1+1=\\ud800", "target": "2"}\n',
        "data/train.jsonl": '{"prompt": "1+1=", "target": "2"}\n',
        "escape.jsonl": '{"prompt": "1+1=", "target": "2"}\n',
        "user_run/config.yaml": "task: arith\n",
        "user_run/results.csv": "a,b\n",
        "user_eval/metrics.json": '{"mine": 1}\n',
        "predictions/good.jsonl": '{"prediction": "#### 2", "reference": "#### 2"}\n',
    }
    for name, text in more.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    shutil.copytree(root / "tiny", root / "torn")
    weights = root / "torn/model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(root / "tiny", root / "pickled")
    (root / "pickled/model.safetensors").unlink()
    # Not tensors: weights_only refuses to rebuild the object (nothing of it runs).
    torch.save({"saved": datetime.date(2020, 1, 1)}, root / "pickled/pytorch_model.bin")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root / "archived", filter="data")
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
    # A task option given as key=value is read by its declared type: text stays text.
    (
        train("--task-options", "operations=*%"),
        "arith operations must be distinct characters of '+-*/'; got '*%'",
    ),
    (
        train("--task", "jsonl", "--task-options", "path={inputs}/no #such: file"),
        "no #such: file/train.jsonl is missing",
    ),
    (train("--task-options", "no_such=1"), "task 'arith' has no option no_such"),
    (["train", "--output-dir", "{inputs}/a_file"], "a_file is a file, not a folder"),
    (train("--loss", "ce=nan"), "weight of 'ce' must be a finite number >= 0, got nan"),
    (train("--loss", "ce=inf"), "weight of 'ce' must be a finite number >= 0, got inf"),
    (train("--loss", "ce=-1"), "weight of 'ce' must be a finite number >= 0, got -1"),
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
    # files that are not YAML text, keys given twice or not text, lists for mappings
    (train_config("latin1.yaml"), "latin1.yaml, line 2: not UTF-8 text (byte 0xe9)"),
    (train_config("binary.yaml"), "binary.yaml: a binary file, not YAML text"),
    (train_config("twice.yaml"), "twice.yaml, line 1 and line 3: key 'seed' is given twice"),
    (train_config("int_key.yaml"), "int_key.yaml, line 2: key 3 is not a name"),
    # ranges
    (train("--seed", str(2**32)), "field 'seed' must be <= 4294967295, got 4294967296"),
    (train("--seed", "-1"), "field 'seed' must be >= 0, got -1"),
    (train("--max-length", "1"), "field 'max_length' must be >= 2, got 1"),
    (train("--lora-r", "100000"), "field 'lora_r': rank 100000 is larger than the smaller side"),
    (train("--gdice-smooth", "-1"), "field 'gdice_smooth' must be >= 0"),
    (["train", "--model", "", "--output-dir", "{out}"], "field 'model' expects a name"),
    # data, names that become paths, the user's folders
    (jsonl_train("surrogate"), "surrogate/train.jsonl:1: holds a lone surrogate escape"),
    (train("--train-split", "../escape"), "field 'train_split' '../escape' holds a path sep"),
    (
        ["train", "--model", "{tiny}", "--output-dir", "{inputs}/user_run", "--overwrite"],
        "user_run is not empty and holds no seglm run (config.yaml is not seglm's)",
    ),
    (["train", "--output-dir", "/proc/seglm-test/run"], "cannot create the training run"),
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
    (["eval", "{tiny}", "--task", "arith", "--seed", "-2"], "field 'seed' must be >= 0"),
    (
        ["eval", "{tiny}", "--task", "jsonl", "-o", "path={inputs}/data", "--split", "../escape"],
        "field 'split' '../escape' holds a path separator",
    ),
    (
        ["eval", "{tiny}", "--task", "arith", "--output-dir", "{inputs}/user_eval"],
        "user_eval is not empty and seglm did not make it (metrics.json is not seglm's)",
    ),
    (
        ["eval", "{tiny}", "--task", "arith", "--output-dir", "/proc/seglm-test/eval"],
        "cannot create the evaluation /proc/seglm-test/eval",
    ),
    (["eval", "{inputs}/torn", "--task", "arith"], "model.safetensors is cut short or damaged"),
    (
        ["eval", "{inputs}/pickled", "--task", "arith"],
        "pytorch_model.bin does not load as tensors with weights_only",
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
    (
        ["compare", "--out", "{inputs}/not_a_grid", "--losses", "ce"],
        "not_a_grid is not empty and seglm did not make it (notes.txt is not seglm's)",
    ),
    (["compare", "{inputs}/grid_latin1.yaml", "--dry-run"], "line 2: not UTF-8 text (byte 0xe9)"),
    (["compare", "{inputs}/grid_binary.yaml", "--dry-run"], "a binary file, not YAML text"),
    (["compare", "{inputs}/grid_twice.yaml", "--dry-run"], "line 3 and line 4: key 'losses'"),
    (["compare", "{inputs}/grid_train_list.yaml", "--dry-run"], "train: expected a mapping"),
    (["compare", "{inputs}/grid_eval_list.yaml", "--dry-run"], "eval: expected a mapping"),
    (["compare", "{inputs}/grid_escape.yaml", "--dry-run"], "'../../escape' holds a path sep"),
    (["compare", "--losses", "ce", "--task", "..", "--dry-run"], "task '..' is '..'"),
    (["compare", "--losses", "ce", "--seeds", "4294967296,", "--dry-run"], "must be <= 4294967295"),
    # seglm losses, score, report, data
    (["losses", "ce=nan"], "weight of 'ce' must be a finite number >= 0, got nan"),
    (["losses", "ce=inf"], "weight of 'ce' must be a finite number >= 0, got inf"),
    (["losses", "ce=-1"], "weight of 'ce' must be a finite number >= 0, got -1"),
    (["losses", "cee=1"], "unknown loss 'cee'; did you mean 'ce'"),
    (["losses", "ce@prompt=1"], "scope 'prompt' is not one of all, answer"),
    (["score", "gsm8k", "{inputs}/predictions/bad.jsonl"], "bad.jsonl, line 2"),
    (["score", "gsm8k", "{inputs}/predictions/missing.jsonl"], "field 'prediction'"),
    (["score", "gsm8k", "{inputs}/no_such.jsonl"], "no_such.jsonl"),
    (["report", "{inputs}/not_a_grid"], "holds no grid"),
    (["report", "{inputs}/archived", "--out", "{inputs}/a_file"], "a_file is a file, not a folder"),
    (
        ["report", "{inputs}/archived", "--out", "{inputs}/not_a_grid"],
        "not_a_grid is not empty and seglm did not make it (notes.txt is not seglm's)",
    ),
    (["report", "{inputs}/archived", "--seed", "-1"], "Invalid value for '--seed'"),
    (
        [
            "score",
            "gsm8k",
            "{inputs}/predictions/good.jsonl",
            "--per-example",
            "{inputs}/predictions/good.jsonl",
        ],
        "good.jsonl is also PREDICTIONS: writing it would replace that file",
    ),
    (["data", "show", "jsonl", "-o", "path={inputs}/data", "--split", "../escape"], "path sep"),
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
