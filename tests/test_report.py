"""seglm.report on runs folders written by the grid with stand-in training and evaluation: the
statistics against hand-computed values, the figures, and refusals."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
from grid_fakes import FakeRuns, example_scores
from matplotlib.image import imread
from rich.console import Console
from scipy.stats import binomtest
from train._helpers import save_tiny_model
from typer.testing import CliRunner

from seglm.cli import app
from seglm.commands.report import print_report
from seglm.experiments import EvalConfig, Grid, GridError, load_grid, run_grid
from seglm.grid_roscoe import score_roscoe
from seglm.report import build_report
from seglm.report.load import Arm, baseline_roles
from seglm.runs import ROSCOE_FILE
from seglm.stats import (
    holm,
    minimum_detectable_effect,
    paired_p_value,
    variance_components,
)
from seglm.tasks import get_task

RATES = {"base": 0.05, "ce-lam1": 0.3, "lovasz-lam0.6": 0.6, "lovasz-lam0.8": 0.45}
EXAMPLES = 40


def make_runs(
    root: Path, model: Path, monkeypatch: pytest.MonkeyPatch, fakes: FakeRuns, **changes: Any
) -> Path:
    fakes.install(monkeypatch)
    values: dict[str, Any] = {
        "tasks": ["arith"],
        "models": [str(model)],
        "losses": ["ce", "lovasz", "focal"],
        "lambdas": [0.6, 0.8],
        "seeds": [0, 1, 2],
        "base": True,
        "eval": EvalConfig(limit=EXAMPLES),
        **changes,
    }
    run_grid(Grid(**values), root, progress=False)
    return root


def scores(arm: str, seeds: list[int | None], rates: dict[str, float] = RATES) -> np.ndarray:
    return np.vstack([example_scores(rates.get(arm, 0.3), arm, s, EXAMPLES) for s in seeds])


def test_table_values_match_hand_computed_statistics(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_runs(tmp_path / "runs", tiny_model, monkeypatch, FakeRuns(RATES))
    report = build_report(root, resamples=1000)
    (group,) = report.groups
    stats = {s.arm: s for s in group.stats}
    assert list(stats) == [
        "base", "ce-lam1", "focal-lam0.6", "focal-lam0.8", "lovasz-lam0.6", "lovasz-lam0.8",
    ]  # fmt: skip
    ce, lovasz = scores("ce-lam1", [0, 1, 2]), scores("lovasz-lam0.6", [0, 1, 2])
    em = stats["lovasz-lam0.6"].estimates["exact_match"]
    assert em.mean == pytest.approx(lovasz.mean())
    assert em.low < em.mean < em.high and (em.seeds, em.examples) == (3, EXAMPLES)
    difference = stats["lovasz-lam0.6"].versus_ce["exact_match"]
    assert difference.difference == pytest.approx(lovasz.mean() - ce.mean())
    assert difference.low > 0 and difference.p_value < 0.01
    mcnemar = stats["lovasz-lam0.6"].versus["CE(all)"].mcnemar
    a_only = int(((lovasz == 1) & (ce == 0)).sum())
    b_only = int(((lovasz == 0) & (ce == 1)).sum())
    assert (mcnemar.a_only, mcnemar.b_only) == (a_only, b_only)
    assert mcnemar.p_value == pytest.approx(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    # IoU (0.25 + 0.5 EM in the stand-in) is compared the same way.
    assert stats["lovasz-lam0.6"].versus_ce["iou"].difference == pytest.approx(
        0.5 * (lovasz.mean() - ce.mean())
    )
    # Beside each difference, its MDE: four trained arms are compared with CE(all), a Holm family
    # of 4, and the standard error comes from the seed, example and residual variances.
    comparison = stats["lovasz-lam0.6"].versus["CE(all)"]
    components = variance_components(lovasz - ce)
    error, freedom = components.standard_error, components.degrees_of_freedom
    assert difference.standard_error == pytest.approx(error)
    assert comparison.mde["exact_match"] == pytest.approx(
        minimum_detectable_effect(error, 4, degrees_of_freedom=freedom)
    )
    assert comparison.mde["exact_match"] != pytest.approx(
        minimum_detectable_effect(error, 1, degrees_of_freedom=freedom)
    )
    assert difference.p_value == pytest.approx(paired_p_value(lovasz - ce))
    # The base model is not tested in a family: its MDE is at 0.05.
    base_error = variance_components(np.repeat(scores("base", [None]), 3, axis=0) - ce)
    assert stats["base"].versus["CE(all)"].mde["exact_match"] == pytest.approx(
        minimum_detectable_effect(
            base_error.standard_error, 1, degrees_of_freedom=base_error.degrees_of_freedom
        )
    )
    assert stats["ce-lam1"].versus == {}  # CE(all) is the only baseline of this grid
    # The base model (one evaluation) is paired with every CE seed.
    base = scores("base", [None])
    assert stats["base"].versus_ce["exact_match"].difference == pytest.approx(
        base.mean() - ce.mean()
    )

    headline = group.headline
    assert headline.best == "lovasz-lam0.6" and headline.compared == 4
    assert headline.relative == pytest.approx((lovasz.mean() - ce.mean()) / ce.mean())
    assert headline.p_bonferroni == pytest.approx(min(1.0, 4 * difference.p_value))

    text = report.path.read_text()
    per_seed = ", ".join(f"{100 * value:.1f}" for value in lovasz.mean(axis=1))
    assert f"| lovasz-lam0.6 | 3 | {per_seed} | {100 * lovasz.mean():.1f} [" in text
    assert "Relative gain over CE, as the paper reports it" in text
    assert "Why the relative gain misleads" in text
    shown = (
        f"| lovasz-lam0.6 | {100 * difference.difference:+.1f} [{100 * difference.low:+.1f}, "
        f"{100 * difference.high:+.1f}] | {100 * comparison.mde['exact_match']:.1f} |"
    )
    assert shown in text
    assert f"minimum detectable effect at that level: {100 * headline.mde:.1f}" in text
    saved = json.loads((root / "report.json").read_text())
    assert saved["groups"][0]["headline"]["best"] == "lovasz-lam0.6"
    arms = {arm["arm"]: arm for arm in saved["groups"][0]["arms"]}
    mde = arms["lovasz-lam0.6"]["versus"]["CE(all)"]["mde"]["exact_match"]
    assert mde == pytest.approx(comparison.mde["exact_match"])


def test_each_arm_meets_every_baseline_with_holm_across_arms(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rates = {"ce-lam1": 0.3, "ce-answer": 0.5, "control": 0.45, "lovasz-lam0.6": 0.5}
    arms = {"ce-answer": "ce@answer=1", "control": "ce=0.6,ce@answer=0.4"}
    root = make_runs(
        tmp_path / "runs", tiny_model, monkeypatch, FakeRuns(rates),
        losses=["ce", "lovasz", "dft"], lambdas=[0.6], arms=arms, base=False,
    )  # fmt: skip
    report = build_report(root, resamples=500)
    (group,) = report.groups
    roles = {"ce-lam1": "CE(all)", "ce-answer": "CE(answer)", "control": "control"}
    assert group.group.roles == roles
    stats = {s.arm: s for s in group.stats}
    assert list(stats) == ["ce-lam1", "ce-answer", "control", "lovasz-lam0.6", "dft-lam0.6"]
    seeds = [0, 1, 2]
    lovasz, control = scores("lovasz-lam0.6", seeds, rates), scores("control", seeds, rates)
    versus_control = stats["lovasz-lam0.6"].versus["control"]
    assert versus_control.baseline == "control"
    assert versus_control.differences["exact_match"].difference == pytest.approx(
        lovasz.mean() - control.mean()
    )
    assert set(stats["lovasz-lam0.6"].versus) == {"CE(all)", "CE(answer)", "control"}
    assert set(stats["control"].versus) == {"CE(all)", "CE(answer)"}
    # Holm across the four trained arms compared with CE(answer), from each arm's own p-value.
    family = ["ce-lam1", "control", "lovasz-lam0.6", "dft-lam0.6"]
    ce_answer = scores("ce-answer", seeds, rates)
    p_values = [paired_p_value(scores(arm, seeds, rates) - ce_answer) for arm in family]
    expected = holm(p_values)
    found = [stats[arm].versus["CE(answer)"].holm["exact_match"] for arm in family]
    assert found == pytest.approx(expected)
    assert [stats[arm].versus["CE(answer)"].differences["exact_match"].p_value
            for arm in family] == pytest.approx(p_values)  # fmt: skip
    # The headline picks among the losses only, not among the baselines.
    assert group.headline.compared == 2
    text = report.path.read_text()
    for role in ("CE(all)", "CE(answer)", "control"):
        assert f"### Against {role}" in text
    assert "| ce-answer (CE(answer)) | 3 |" in text and "| control | 3 |" in text
    assert "named arms ce-answer (`ce@answer=1`), control (`ce=0.6,ce@answer=0.4`)" in text
    assert set(report.groups[0].figures) >= {"main", "training"}


def test_figures_are_written_and_linked(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_runs(tmp_path / "runs", tiny_model, monkeypatch, FakeRuns(RATES, roscoe=True))
    report = build_report(root, tmp_path / "out", resamples=200)
    (group,) = report.groups
    assert set(group.figures) == {"main", "lambda", "errors", "training", "correlations"}
    text = report.path.read_text()
    for path in group.figures.values():
        image = imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # not a blank canvas
        assert f"]({path.relative_to(tmp_path / 'out').as_posix()})" in text
    pairs = {(p["x"], p["y"]): p for p in group.correlations["pairs"]}
    assert pairs[("faithfulness_step", "exact_match")]["r"] > 0.9
    assert "info_chain" in group.correlations["columns"]


def test_no_roscoe_no_heatmap_and_one_lambda_no_sweep(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_runs(
        tmp_path / "runs", tiny_model, monkeypatch, FakeRuns(RATES), lambdas=[0.6], seeds=[0]
    )
    (group,) = build_report(root, resamples=200).groups
    assert set(group.figures) == {"main", "errors", "training"}
    assert group.correlations is None


def test_failed_cells_are_listed_and_the_rest_reported(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns(RATES, fail=lambda arm: arm.startswith("focal"))
    root = make_runs(tmp_path / "runs", tiny_model, monkeypatch, fakes, seeds=[0])
    report = build_report(root, resamples=200)
    assert "focal-lam0.6" not in {s.arm for s in report.groups[0].stats}
    text = report.path.read_text()
    assert "Cells: 4 finished, 2 failed, 0 pending." in text
    assert f"failed: `arith/{tiny_model.name}/focal-lam0.6/seed0`" in text


def test_report_without_finished_cells_is_refused(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeRuns(fail=lambda arm: True)
    root = make_runs(tmp_path / "runs", tiny_model, monkeypatch, fakes, seeds=[0], base=False)
    with pytest.raises(GridError, match="no finished cell"):
        build_report(root)
    with pytest.raises(GridError, match="holds no grid"):
        build_report(tmp_path)


def test_cells_on_different_examples_or_settings_are_refused(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_runs(tmp_path / "runs", tiny_model, monkeypatch, FakeRuns(RATES), seeds=[0])
    cell = root / "arith" / tiny_model.name / "lovasz-lam0.6" / "seed0"
    settings = json.loads((cell / "eval_config.json").read_text())
    (cell / "eval_config.json").write_text(json.dumps({**settings, "dtype": "bf16"}))
    with pytest.raises(GridError, match="evaluated differently \\(dtype: 'fp32' vs 'bf16'\\)"):
        build_report(root)
    (cell / "eval_config.json").write_text(json.dumps(settings))
    lines = (cell / "predictions.jsonl").read_text().splitlines()
    (cell / "predictions.jsonl").write_text("\n".join(lines[1:]) + "\n")
    metrics = json.loads((cell / "metrics.json").read_text())
    (cell / "metrics.json").write_text(json.dumps({**metrics, "n": len(lines) - 1}))
    with pytest.raises(GridError, match="evaluated different examples"):
        build_report(root)


def test_several_models_get_one_section_each_and_the_mean_gain(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = save_tiny_model(tmp_path / "other-model", seed=1)
    root = make_runs(
        tmp_path / "runs", tiny_model, monkeypatch, FakeRuns(RATES),
        models=[str(tiny_model), str(other)], losses=["ce", "lovasz"], lambdas=[0.6], seeds=[0],
    )  # fmt: skip
    report = build_report(root, resamples=200)
    assert [g.group.model for g in report.groups] == [str(tiny_model), str(other)]
    # The stand-in's scores depend on the arm and seed only: both models score alike.
    (gain,) = {round(g.headline.relative, 9) for g in report.groups}
    text = report.path.read_text()
    assert f"## arith / {other}" in text
    assert f"over 2 (task, model) pairs, as the paper reports it: **{100 * gain:+.0f}%**" in text
    assert len(list((root / "figures").glob("*-main.png"))) == 2


class StubRoscoeScorer:
    """Scores a chain by its question's length, so the sources it was given can be checked."""

    seen: ClassVar[list[dict[str, str]]] = []

    def __init__(self, config: Any) -> None:
        self.families = config.families

    def score(self, examples: Any) -> SimpleNamespace:
        chains = list(examples)
        StubRoscoeScorer.seen += chains
        scores = [
            {"faithfulness_step": len(c["source"]) / 1000, "info_chain": None} for c in chains
        ]
        return SimpleNamespace(scores=scores)


def test_roscoe_scores_are_computed_once_and_feed_the_heatmap(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_runs(
        tmp_path / "runs", tiny_model, monkeypatch, FakeRuns(RATES), losses=["ce"], seeds=[0]
    )
    monkeypatch.setattr("seglm.metrics.roscoe.RoscoeScorer", StubRoscoeScorer)
    scored = score_roscoe(root)
    assert sorted(p.name for p in scored) == ["base", "seed0"]
    questions = [e.source for e in get_task("arith").load("test", limit=EXAMPLES)]
    assert [c["source"] for c in StubRoscoeScorer.seen[:EXAMPLES]] == questions
    lines = (scored[0] / ROSCOE_FILE).read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == EXAMPLES and first["id"] == "arith/test/0"
    assert first["faithfulness_step"] == pytest.approx(len(questions[0]) / 1000)
    assert score_roscoe(root) == []  # already scored
    (group,) = build_report(root, resamples=200).groups
    assert "correlations" in group.figures
    assert group.correlations["columns"] == ["faithfulness_step", "exact_match", "iou"]


CHOICE_EXAMPLES = 40


def _choice_data(folder: Path, train_labels: str, test_labels: str) -> Path:
    folder.mkdir(parents=True)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        lines = [
            {"prompt": f"question {i}", "choices": ["w", "x", "y", "z"], "label": label}
            for i, label in enumerate(labels)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


# Per (arm, seed): the letters answered, in runs over the 40 examples ("x" answers nothing).
ANSWERS = {
    ("ce-lam1", 0): "A" * 38 + "B" * 2,  # 95% A
    ("ce-lam1", 1): "A" * 36 + "C" * 4,  # 90% A: collapsed
    ("lovasz-lam0.6", 0): "A" * 40,
    ("lovasz-lam0.6", 1): "A" * 40,  # collapsed, like the baseline: both collapsed
    ("control", 0): "A" * 30 + "D" * 10,  # 75% A
    ("control", 1): "D" * 36 + "A" * 4,  # 90% D: 82.5% on average, though A and D pool to 50%
    ("focal-lam0.6", 0): "A" * 20 + "B" * 10 + "x" * 10,
    ("focal-lam0.6", 1): "ABCD" * 10,  # not collapsed
}


def test_collapsed_arms_and_the_constant_answer_of_a_choice_task(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Training answers: B is the most common (4 of 10); test answers: A is (16 of 40), so a
    # constant chosen on the test split would be A and score 40%; B scores 10 / 40.
    data = _choice_data(tmp_path / "data", "BBBBAAACCD", "A" * 16 + "B" * 10 + "C" * 8 + "D" * 6)
    options = {"path": str(data), "choices_field": "choices"}
    fakes = FakeRuns(
        prediction=lambda arm, seed, index: ANSWERS[(arm, seed)][index],
        reference=lambda index: ("A" * 16 + "B" * 10 + "C" * 8 + "D" * 6)[index],
    )
    root = make_runs(
        tmp_path / "runs", tiny_model, monkeypatch, fakes, tasks=["jsonl"],
        losses=["ce", "lovasz", "focal"], lambdas=[0.6], arms={"control": "ce=0.6,ce@answer=0.4"},
        seeds=[0, 1], base=False, train={"task_options": options},
    )  # fmt: skip
    report = build_report(root, resamples=200)
    (group,) = report.groups
    stats = {s.arm: s for s in group.stats}
    assert [s.arm for s in group.stats if s.collapsed] == ["ce-lam1", "control", "lovasz-lam0.6"]
    assert stats["control"].answers.top_share == pytest.approx(0.825)
    assert stats["control"].answers.shares["A"] == pytest.approx(34 / 80)
    assert stats["focal-lam0.6"].answers.top_share == pytest.approx((0.5 + 0.25) / 2)
    assert stats["focal-lam0.6"].answers.shares["none"] == pytest.approx(10 / 80)
    assert [c.most_common for c in stats["ce-lam1"].answers.cells] == [("A", 0.95), ("A", 0.9)]
    constant = report.groups[0].constant
    assert (constant.answer, constant.train_examples) == ("B", 10)
    assert constant.train_shares == {"A": 0.3, "B": 0.4, "C": 0.2, "D": 0.1}
    assert constant.estimate.mean == pytest.approx(10 / 40)

    text = report.path.read_text()
    assert "| ce-lam1 (CE(all)) [collapsed] | 2 |" in text and "| focal-lam0.6 | 2 |" in text
    assert "### Against CE(all) (`ce-lam1`, collapsed)" in text
    assert "| lovasz-lam0.6 [both collapsed] |" in text  # against CE(all), both collapsed
    assert "| focal-lam0.6 | " in text
    assert "| control | 42.5 | 0.0 | 0.0 | 57.5 | 0.0 | A: 75.0, D: 90.0 | **yes** |" in text
    assert "| references (evaluated) | 40.0 | 25.0 | 20.0 | 15.0 |" in text
    assert "| references (`train` split) | 30.0 | 40.0 | 20.0 | 10.0 |" in text
    assert "Best constant answer: `B`, the most common answer of the training split" in text
    assert "scores exact match 25.0% [" in text
    assert "Both arms are collapsed" in text  # lovasz against the (collapsed) control
    saved = json.loads((root / "report.json").read_text())["groups"][0]
    assert saved["collapsed"] == ["ce-lam1", "control", "lovasz-lam0.6"]
    assert saved["constant_answer"]["answer"] == "B"

    console = Console(record=True, width=200)
    print_report(report, console)
    printed = console.export_text()
    assert "ce-lam1 (CE(all)) [collapsed]" in printed
    assert "collapsed arms: ce-lam1, control, lovasz-lam0.6" in printed
    assert "Best constant answer: B" in printed

    # Without the training split the report says why, and still reports the rest.
    (data / "train.jsonl").unlink()
    report = build_report(root, resamples=200)
    assert report.groups[0].constant.estimate is None
    assert "train.jsonl is missing" in report.groups[0].constant.problem
    assert "Best constant answer: not computed, the training split `train`" in (
        report.path.read_text()
    )


def test_a_generation_task_reports_its_most_common_answers(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def prediction(arm: str, seed: int | None, index: int) -> str:
        if arm == "base":
            return "no idea"
        return "<<2+2=4>> #### 4" if arm == "lovasz-lam0.6" or index % 4 else f"#### {index}"

    fakes = FakeRuns(prediction=prediction)
    root = make_runs(
        tmp_path / "runs", tiny_model, monkeypatch, fakes, losses=["ce", "lovasz"],
        lambdas=[0.6], seeds=[0],
    )  # fmt: skip
    (group,) = build_report(root, resamples=200).groups
    stats = {s.arm: s for s in group.stats}
    # CE: 30 of 40 answer 4, the other 10 their index (0, 4, 8, ...): 4 counts 31 times.
    (cell,) = stats["ce-lam1"].answers.cells
    assert cell.most_common == ("4", 31 / 40) and cell.distinct == 10
    assert [s.arm for s in group.stats if s.collapsed] == ["lovasz-lam0.6"]
    assert stats["base"].answers.shares == {"none": 1.0} and not stats["base"].collapsed
    assert group.constant is None  # no constant answer outside multiple choice


def test_training_sizes_get_a_group_each_with_the_untrained_model_and_a_figure(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_runs(
        tmp_path / "runs", tiny_model, monkeypatch, FakeRuns(RATES), losses=["ce", "lovasz"],
        lambdas=[0.6], seeds=[0, 1], train_sizes=[20, 40],
    )  # fmt: skip
    assert (root / "arith" / tiny_model.name / "n20" / "ce-lam1" / "seed1").is_dir()
    report = build_report(root, resamples=200)
    assert [g.group.train_size for g in report.groups] == [20, 40]
    for group_report in report.groups:
        group = group_report.group
        assert list(group.arms) == ["base", "ce-lam1", "lovasz-lam0.6"]
        assert group.arms["ce-lam1"].values["exact_match"].shape == (2, EXAMPLES)
        assert group.slug.endswith(f"-n{group.train_size}")
    (path,) = report.size_figures.values()
    assert path.name == f"arith-{tiny_model.name}-sizes.png"
    image = imread(path)
    assert image.shape[1] > 600 and image[..., :3].std() > 0.05
    text = report.path.read_text()
    assert f"## arith / {tiny_model}, 20 training examples" in text
    assert f"## arith / {tiny_model}, 40 training examples" in text
    assert f"## arith / {tiny_model}: against the training size" in text
    assert f"](figures/{path.name})" in text
    saved = json.loads((root / "report.json").read_text())
    assert [g["train_size"] for g in saved["groups"]] == [20, 40]
    # One size: no figure against the size.
    root = make_runs(
        tmp_path / "one", tiny_model, monkeypatch, FakeRuns(RATES), losses=["ce"], seeds=[0],
        train_sizes=[20],
    )  # fmt: skip
    assert build_report(root, resamples=200).size_figures == {}


RESULTS = Path(__file__).resolve().parents[1] / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
runner = CliRunner(env={"COLUMNS": "240"})  # room for the wide tables


def _unpacked(name: str, folder: Path) -> Path:
    with tarfile.open(RESULTS / f"{name}.tar.gz") as archive:
        archive.extractall(folder, filter="data")
    return folder


def _plain(output: str) -> str:
    """The output without rich's boxes and line wrapping."""
    return re.sub(r"[\s│╭╮╰╯─┃┏┓┗┛━┡┩└┘┌┐├┤┼┬┴]+", " ", output)


def test_the_archived_arith_grid_has_an_mde_beside_each_difference(tmp_path: Path) -> None:
    root = _unpacked("arith-3seeds", tmp_path / "arith")
    result = runner.invoke(app, ["report", str(root), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    printed = _plain(result.output)
    # Lovász against the control, exact match: seed variance 0.00025, example 0.0157, residual
    # 0.0709 over 3 seeds x 150 problems: SE 1.86 points on 4.02 degrees of freedom
    # (Satterthwaite); Holm family of 2 (Lovász, DFT): MDE (t(0.9875) + t(0.8)) x 1.86 = 8.2
    # points; p of t = -1.56 / 1.86: 0.450 (Holm 0.900). McNemar's p is the same as before.
    assert re.search(r"lovasz-lam0.6 -1.6 \[\S+ \S+ 8.2 0.450 0.900 0.337 \+1.3", printed)
    assert re.search(r"dft-lam0.6 -0.7 \[\S+ \S+ 6.9 0.714 0.900 0.755", printed)
    assert "collapsed arms: none" in printed
    saved = json.loads((root / "report.json").read_text())["groups"][0]
    arms = {arm["arm"]: arm for arm in saved["arms"]}
    versus = arms["lovasz-lam0.6"]["versus"]["control"]
    difference = versus["differences"]["exact_match"]
    assert difference["standard_error"] == pytest.approx(0.018611, 1e-4)
    assert difference["degrees_of_freedom"] == pytest.approx(4.0234, 1e-3)
    assert versus["mde"]["exact_match"] == pytest.approx(0.0820, abs=5e-4)
    # CE(answer) against CE(all): +6.4 points, but its seeds range from 39.3% to 46.0%: p 0.102
    # (the sign-flip test over examples, blind to that spread, gave 0.012), Holm over four 0.409.
    ce_answer = arms["ce-answer"]["versus"]["CE(all)"]
    assert ce_answer["differences"]["exact_match"]["p_value"] == pytest.approx(0.1023, abs=5e-4)
    assert ce_answer["holm"]["exact_match"] == pytest.approx(0.4092, abs=2e-3)
    text = (root / "report.md").read_text()
    assert "| lovasz-lam0.6 | -1.6 [" in text and "| 8.2 | 0.450 | 0.900 |" in text
    assert "lovasz-lam0.6 against the control (`control`), exact match: -1.6 [" in text


def test_the_archived_openbookqa_grid_shows_its_collapsed_arms_and_the_constant_answer(
    tmp_path: Path,
) -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the offline datasets are not at {SHARED_DATA} (../shared/data)")
    root = _unpacked("openbookqa-3seeds", tmp_path / "openbookqa")
    argv = ["report", str(root), "--resamples", "200", "--data-dir", str(SHARED_DATA)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    printed = _plain(result.output)
    # In 16 of the 24 trained cells at least 96% of the answers are A; per arm, the mean over
    # seeds of a seed's most common answer's share is above 80% for all but focal.
    collapsed = "ce-lam1, ce-answer, control, sadl-lam0.6, gdice-lam0.6, lovasz-lam0.6, dft-lam0.6"
    assert f"collapsed arms: {collapsed}" in printed
    assert "lovasz-lam0.6 [both collapsed] +0.7" in printed  # against the control
    assert "focal-lam0.6 +0.1" in printed
    assert "A: 100.0, A: 100.0, A: 99.8" in printed  # Lovász's seeds
    assert "Best constant answer: A, the most common answer of the training split train " in (
        printed
    )
    assert "(27.8% of 4957)" in printed and "scores exact match 27.6% [" in printed
    saved = json.loads((root / "report.json").read_text())["groups"][0]
    cells = [
        cell for arm in saved["arms"] if arm["arm"] != "base" for cell in arm["answers"]["cells"]
    ]
    assert sum(cell["counts"].get("A", 0) / cell["total"] >= 0.96 for cell in cells) == 16
    assert len(cells) == 24


@pytest.mark.parametrize("dataset", ["gsm8k", "mathqa", "openbookqa", "hellaswag"])
def test_the_paper_grids_hold_the_weighting_control_and_ce_on_the_answer(dataset: str) -> None:
    grid = load_grid(RESULTS.parent / "configs" / "grids" / f"paper-{dataset}.yaml")
    trained = [cell for cell in grid.cells() if not cell.is_base]
    assert len(trained) == 35  # 5 models x (CE, the paper's 4 losses, the 2 controls)
    arms = {cell.arm: Arm(cell.arm, cell.loss, cell.lam, cell.loss_spec) for cell in trained}
    roles = baseline_roles(list(arms.values()), "all")
    assert roles == {"ce-lam1": "CE(all)", "control": "control", "ce-answer": "CE(answer)"}
    assert {"focal-lam0.6", "sadl-lam0.6", "gdice-lam0.6", "lovasz-lam0.6"} < set(arms)
