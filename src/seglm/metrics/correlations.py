"""Pearson correlations between per-example metrics (ROSCOE scores, exact match, IoU).

Input: per-example records (dicts) of one or more runs, concatenated. A value that is None,
missing or NaN is dropped pairwise: each pair of metrics uses the examples that have both.
Where r is undefined (fewer than two such examples, or a constant metric) it is null, with a reason.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from scipy.stats import pearsonr

from .roscoe import SCORE_NAMES

TARGETS = ("exact_match", "iou")
DEFAULT_COLUMNS = (*SCORE_NAMES, *TARGETS)


def _number(value: Any, index: int, column: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    raise ValueError(f"record {index}: {column!r} must be a number, a bool or null, got {value!r}")


def _column_values(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> np.ndarray:
    """[len(records), len(columns)] with NaN where a value is missing."""
    values = np.full((len(records), len(columns)), math.nan)
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {index}: expected a mapping, got {type(record).__name__}")
        for position, column in enumerate(columns):
            values[index, position] = _number(record.get(column), index, column)
    return values


def _undefined_reason(x_name: str, x: np.ndarray, y_name: str, y: np.ndarray) -> str | None:
    """Why Pearson r is undefined for x and y (finite in both), or None when it is defined."""
    both = np.isfinite(x) & np.isfinite(y)
    for name, values in ((x_name, x), (y_name, y)):
        if np.isfinite(values).sum() < 2:
            return f"{name} has a value in fewer than 2 examples"
    if both.sum() < 2:
        return f"fewer than 2 examples have both {x_name} and {y_name}"
    for name, values in ((x_name, x[both]), (y_name, y[both])):
        if np.ptp(values) == 0:
            return f"{name} is constant ({values[0]:g}) over these examples"
    return None


def pearson_pair(x_name: str, x: np.ndarray, y_name: str, y: np.ndarray) -> dict[str, Any]:
    """Pearson r, its two-sided p-value and n over the examples where both values are finite."""
    both = np.isfinite(x) & np.isfinite(y)
    result: dict[str, Any] = {"x": x_name, "y": y_name, "n": int(both.sum())}
    reason = _undefined_reason(x_name, x, y_name, y)
    if reason is not None:
        result.update(r=None, p_value=None, reason=reason)
        return result
    with warnings.catch_warnings():
        # Two examples give r = ±1 with p = 1; scipy warns about it, the n in the result says it.
        warnings.simplefilter("ignore")
        statistic = pearsonr(x[both], y[both])
    result.update(r=float(statistic.statistic), p_value=float(statistic.pvalue), reason=None)
    return result


def pearson_correlations(
    records: Iterable[Mapping[str, Any]], columns: Sequence[str] = DEFAULT_COLUMNS
) -> dict[str, Any]:
    """Pearson r (with p-value and n) for every pair of ``columns``, as a JSON-ready dict."""
    rows = list(records)
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns must be distinct, got {list(columns)}")
    values = _column_values(rows, columns)
    pairs = [
        pearson_pair(columns[i], values[:, i], columns[j], values[:, j])
        for i, j in combinations(range(len(columns)), 2)
    ]
    return {"method": "pearson", "n_records": len(rows), "columns": list(columns), "pairs": pairs}


def _find_pair(result: Mapping[str, Any], a: str, b: str) -> Mapping[str, Any]:
    for pair in result["pairs"]:
        if {pair["x"], pair["y"]} == {a, b}:
            return pair
    raise KeyError(f"no correlation between {a} and {b} in the result")


def render_correlations(
    result: Mapping[str, Any], targets: Sequence[str] = TARGETS, console: Any = None
) -> None:
    """Print r, p and n of every column against each target (a rich table), then why each null
    r is null (once per reason)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    targets = [target for target in targets if target in result["columns"]]
    table = Table(title=f"Pearson correlations ({result['n_records']} examples)")
    table.add_column("metric")
    for target in targets:
        table.add_column(f"r {target}", justify="right")
        table.add_column("p", justify="right")
        table.add_column("n", justify="right")
    reasons: dict[str, None] = {}
    for column in result["columns"]:
        cells = [column]
        for target in targets:
            if column == target:
                cells += ["", "", ""]
                continue
            pair = _find_pair(result, column, target)
            if pair["r"] is None:
                reasons[pair["reason"]] = None
                cells += ["null", "", str(pair["n"])]
            else:
                cells += [f"{pair['r']:+.3f}", f"{pair['p_value']:.2g}", str(pair["n"])]
        table.add_row(*cells)
    console.print(table)
    for reason in reasons:
        console.print(f"null r: {reason}")
