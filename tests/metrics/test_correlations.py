"""Pearson correlations between per-example metrics: values, pairwise dropping, undefined r."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from rich.console import Console

from seglm.metrics.correlations import (
    DEFAULT_COLUMNS,
    pearson_correlations,
    render_correlations,
)
from seglm.metrics.roscoe import SCORE_NAMES


def pair(result: dict, x: str, y: str) -> dict:
    (found,) = [p for p in result["pairs"] if {p["x"], p["y"]} == {x, y}]
    return found


def test_r_and_p_value_match_the_closed_form() -> None:
    # x = 1, 2, 3 and y = 1, 3, 2: r = 0.5. With n = 3 (one degree of freedom) t = r / sqrt(1 - r²)
    # = 1/sqrt(3) follows a Cauchy law, so p = 1 - (2/π) atan(t) = 1 - (2/π)(π/6) = 2/3.
    records = [{"a": 1, "b": 1}, {"a": 2, "b": 3}, {"a": 3, "b": 2}]
    result = pearson_correlations(records, columns=["a", "b"])
    assert result["pairs"] == [
        {
            "x": "a",
            "y": "b",
            "n": 3,
            "r": pytest.approx(0.5),
            "p_value": pytest.approx(2 / 3),
            "reason": None,
        }
    ]


def test_missing_none_and_nan_values_are_dropped_pairwise() -> None:
    records = [
        {"faithfulness_step": 0.1, "exact_match": False, "iou": 0.0},
        {"faithfulness_step": 0.5, "exact_match": True, "iou": None},
        {"faithfulness_step": 0.9, "exact_match": True},  # no iou at all
        {"faithfulness_step": math.nan, "exact_match": False, "iou": 0.5},
        {"faithfulness_step": 0.3, "exact_match": False, "iou": 1.0},
    ]
    result = pearson_correlations(records)
    em = pair(result, "faithfulness_step", "exact_match")
    assert em["n"] == 4
    # (0.1, 0.5, 0.9, 0.3) against (0, 1, 1, 0): deviations (-.35, .05, .45, -.15) and ±.5, so
    # r = sum(dx dy) / sqrt(sum dx² sum dy²) = 0.5 / sqrt(0.35 * 1).
    assert em["r"] == pytest.approx(0.5 / math.sqrt(0.35))
    iou = pair(result, "faithfulness_step", "iou")
    assert iou["n"] == 2 and iou["r"] == pytest.approx(1.0)  # (0.1, 0.0) and (0.3, 1.0)
    assert pair(result, "exact_match", "iou")["n"] == 3


def test_constant_or_empty_columns_give_null_with_a_reason_and_no_warning() -> None:
    records = [{"info_chain": 0.5, "exact_match": em, "iou": em / 2} for em in (0, 1, 1, 0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pearson_correlations(records)
    constant = pair(result, "info_chain", "exact_match")
    assert constant["r"] is None and constant["p_value"] is None and constant["n"] == 4
    assert constant["reason"] == "info_chain is constant (0.5) over these examples"
    skipped = pair(result, "grammar_step", "iou")
    assert skipped["r"] is None and skipped["n"] == 0
    assert skipped["reason"] == "grammar_step has a value in fewer than 2 examples"
    assert pair(result, "exact_match", "iou")["r"] == pytest.approx(1.0)
    json.dumps(result, allow_nan=False)


def test_every_pair_of_the_default_columns_is_reported() -> None:
    result = pearson_correlations([{"exact_match": 1}])
    assert result["columns"] == [*SCORE_NAMES, "exact_match", "iou"]
    assert result["n_records"] == 1
    k = len(DEFAULT_COLUMNS)
    assert len(result["pairs"]) == k * (k - 1) // 2


def test_bad_values_name_the_record_and_key() -> None:
    with pytest.raises(
        ValueError, match=r"record 1: 'iou' must be a number, a bool or null, got 'x'"
    ):
        pearson_correlations([{"iou": 0.5}, {"iou": "x"}])
    with pytest.raises(ValueError, match="record 0: expected a mapping"):
        pearson_correlations([[0.5]])


def test_table_shows_r_p_n_against_each_target_and_the_null_reasons() -> None:
    records = [
        {"faithfulness_step": f, "info_chain": 0.7, "exact_match": em, "iou": i}
        for f, em, i in ((0.1, 0, 0.0), (0.2, 0, 0.5), (0.8, 1, 0.5), (0.9, 1, 1.0))
    ]
    result = pearson_correlations(
        records, columns=["faithfulness_step", "info_chain", "exact_match", "iou"]
    )
    console = Console(record=True, width=200)
    render_correlations(result, console=console)
    text = console.export_text()
    assert "r exact_match" in text and "r iou" in text
    r = pair(result, "faithfulness_step", "exact_match")["r"]
    assert f"{r:+.3f}" in text
    assert "null r: info_chain is constant (0.7) over these examples" in text
    assert text.count("null r:") == 1
