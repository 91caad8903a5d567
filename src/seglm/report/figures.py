"""The report's figures (matplotlib, Agg): one PNG per kind and (task, model, training size),
and one per (task, model) against the training size. Collapsed arms are marked in each."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seglm.experiments import (
    BASE,
    CE,
)
from seglm.report.answers import ConstantAnswer
from seglm.report.load import (
    CE_ALL,
    CE_ANSWER,
    COMPONENT,
    CONTROL,
    ERROR_TYPES,
    LABELS,
    MAIN_METRICS,
    Arm,
    Group,
)
from seglm.report.statistics import ArmStats
from seglm.stats import (
    Estimate,
    bootstrap_mean,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from seglm.report.render import GroupReport

COLLAPSED_HATCH = "///"
SIZE_METRICS = ("exact_match", "iou")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


LOSS_COLOURS = {
    BASE: "#c7c7c7",
    CE: "#6b6b6b",
    "focal": "#1f77b4",
    "sadl": "#ff7f0e",
    "gdice": "#2ca02c",
    "lovasz": "#d62728",
    "dft": "#17becf",
}
BASELINE_COLOURS = {CE_ALL: LOSS_COLOURS[CE], CE_ANSWER: "#8c564b", CONTROL: "#e377c2"}
OTHER_COLOURS = ("#9467bd", "#bcbd22", "#7f7f7f", "#aec7e8")


def _colours(group: Group) -> dict[str, Any]:
    """One colour per loss (the same in every figure); its λ variants lighter as λ falls."""
    from matplotlib.colors import to_rgb

    colours: dict[str, Any] = {}
    by_loss: dict[str, list[Arm]] = defaultdict(list)
    for arm in group.arms.values():
        by_loss[group.roles.get(arm.name, arm.loss)].append(arm)
    others = iter(OTHER_COLOURS * len(by_loss))
    for loss, arms in by_loss.items():
        colour = BASELINE_COLOURS.get(loss) or LOSS_COLOURS.get(loss) or next(others)
        base = np.array(to_rgb(colour))
        ordered = sorted(arms, key=lambda arm: -(arm.lam or 0.0))
        for rank, arm in enumerate(ordered):
            lighten = 0.55 * rank / max(1, len(ordered) - 1) if len(ordered) > 1 else 0.0
            colours[arm.name] = tuple(base + (1 - base) * lighten)
    return colours


def _names(stats: Sequence[ArmStats]) -> dict[str, str]:
    """Each arm's name in a figure: ``(collapsed)`` added to a collapsed arm's."""
    return {s.arm: f"{s.arm} (collapsed)" if s.collapsed else s.arm for s in stats}


def _whiskers(estimates: Sequence[Estimate | None]) -> np.ndarray:
    """Error-bar lengths in percent below and above each mean (0 where there is no estimate)."""
    below = [e.mean - e.low if e else 0.0 for e in estimates]
    above = [e.high - e.mean if e else 0.0 for e in estimates]
    # Rounding can put a degenerate interval's bound a hair past its mean.
    return np.clip(100 * np.array([below, above]), 0, None)


def _percent_axis(axes: Axes, label: str) -> None:
    axes.set_ylabel(f"{label} (%)")
    axes.grid(axis="y", alpha=0.3)


def plot_main_metrics(
    group: Group, stats: list[ArmStats], path: Path, constant: ConstantAnswer | None = None
) -> bool:
    """Bars per arm and metric; for multiple choice, the best constant answer's exact match as
    a dotted line."""
    metrics = [m for m in MAIN_METRICS if any(m in s.estimates for s in stats)]
    figure = _figure(4.2 * len(metrics) + 0.6, 4.2)
    colours, names = _colours(group), _names(stats)
    for axes, metric in zip(
        figure.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True
    ):
        shown = [s for s in stats if metric in s.estimates]
        for position, s in enumerate(shown):
            estimate = s.estimates[metric]
            hatch = COLLAPSED_HATCH if s.collapsed else None
            axes.bar(position, 100 * estimate.mean, color=colours[s.arm], hatch=hatch)
            axes.errorbar(
                position, 100 * estimate.mean, yerr=_whiskers([estimate]), color="black", capsize=4
            )
            seeds = np.nanmean(group.arms[s.arm].values[metric], axis=1)
            axes.scatter(
                [position] * len(seeds),
                100 * seeds,
                color="white",
                edgecolor="black",
                s=14,
                zorder=3,
                label="one seed" if position == 0 else None,
            )
        if metric == "exact_match" and constant is not None and constant.estimate is not None:
            axes.axhline(
                100 * constant.estimate.mean,
                color="black",
                linestyle=":",
                label=f"constant answer {constant.answer}",
            )
        axes.set_xticks(range(len(shown)), [names[s.arm] for s in shown], rotation=30, ha="right")
        axes.set_xlabel("arm (loss-lamλ, λ = weight of CE)")
        _percent_axis(axes, LABELS[metric])
        axes.set_title(f"{LABELS[metric]}: mean, 95% CI")
        axes.set_ylim(top=axes.get_ylim()[1] * 1.2)  # room for the legend above the bars
        axes.legend(loc="upper left", fontsize="small")
    figure.suptitle(f"{group.title}, {len(group.ids)} test examples")
    figure.savefig(path)
    return True


def plot_lambda_sweep(group: Group, stats: list[ArmStats], path: Path) -> bool:
    """EM and IoU against λ for every loss that ran at several λ; CE is λ = 1."""
    by_arm = {s.arm: s for s in stats}
    losses = defaultdict(list)
    for arm in group.arms.values():
        if arm.loss not in (BASE, CE):
            losses[arm.loss].append(arm)
    swept = {loss: sorted(arms, key=lambda a: a.lam or 0.0) for loss, arms in losses.items()}
    swept = {loss: arms for loss, arms in swept.items() if len(arms) >= 2}
    if not swept:
        return False
    ce = next((s for s in stats if group.roles.get(s.arm) == CE_ALL), None)
    metrics = [m for m in MAIN_METRICS if any(m in s.estimates for s in stats)]
    figure = _figure(4.6 * len(metrics), 4.0)
    for axes, metric in zip(
        figure.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True
    ):
        for loss, arms in swept.items():
            points = [(a.lam, by_arm[a.name]) for a in arms]
            if ce is not None:
                points.append((1.0, ce))
            points = [(lam, s) for lam, s in points if metric in s.estimates]
            colour = LOSS_COLOURS.get(loss, "#9467bd")
            axes.errorbar(
                [lam for lam, _ in points],
                [100 * s.estimates[metric].mean for _, s in points],
                yerr=_whiskers([s.estimates[metric] for _, s in points]),
                marker="o",
                capsize=3,
                color=colour,
                label=f"CE + {loss}",
            )
            _mark_collapsed(
                axes,
                [(lam, 100 * s.estimates[metric].mean) for lam, s in points if s.collapsed],
                colour,
            )
        if ce is not None and metric in ce.estimates:
            axes.axhline(
                100 * ce.estimates[metric].mean,
                color=LOSS_COLOURS[CE],
                linestyle="--",
                linewidth=1,
                label="CE alone (λ = 1)",
            )
        axes.set_xlabel("λ (weight of CE; 1 − λ on the loss)")
        _percent_axis(axes, LABELS[metric])
        axes.set_title(f"{LABELS[metric]} against λ (mean, 95% CI)")
        axes.legend(fontsize="small")
    figure.suptitle(f"λ sweep: {group.title}")
    figure.savefig(path)
    return True


def plot_error_types(
    group: Group, stats: list[ArmStats], path: Path, resamples: int, seed: int
) -> bool:
    arms = [a for a in group.arms.values() if any(t in a.values for t in ERROR_TYPES)]
    if not arms:
        return False
    figure = _figure(min(16.0, max(9.0, 3.0 + 0.3 * len(ERROR_TYPES) * len(arms))), 4.6)
    axes = figure.subplots()
    colours, names = _colours(group), _names(stats)
    width = 0.8 / len(arms)
    for index, arm in enumerate(arms):
        estimates = [
            bootstrap_mean(arm.values[t], resamples, seed=seed) if t in arm.values else None
            for t in ERROR_TYPES
        ]
        positions = np.arange(len(ERROR_TYPES)) + (index - (len(arms) - 1) / 2) * width
        axes.bar(
            positions,
            [100 * e.mean if e else np.nan for e in estimates],
            width,
            yerr=_whiskers(estimates),
            capsize=2,
            color=colours[arm.name],
            hatch=COLLAPSED_HATCH if names[arm.name] != arm.name else None,
            label=names[arm.name],
        )
    axes.set_xticks(range(len(ERROR_TYPES)), [LABELS[t].replace(" ", "\n") for t in ERROR_TYPES])
    axes.set_xlabel("error type (docs/metrics.md defines each rate)")
    _percent_axis(axes, "mean rate per example")
    axes.set_title(f"Reasoning-step errors per arm (mean, 95% CI)\n{group.title}")
    axes.legend(fontsize="small", title="arm", loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.savefig(path)
    return True


def _curves(logs: list[list[dict[str, Any]]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean of ``key`` over seeds at each logged training step."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for events in logs:
        for event in events:
            if "loss" in event and isinstance(event.get(key), int | float):
                by_step[int(event["step"])].append(float(event[key]))
    if not by_step:
        return None
    steps = np.array(sorted(by_step))
    return steps, np.array([np.mean(by_step[s]) for s in steps])


def _loss_components(arms: Sequence[Arm]) -> list[str]:
    """The loss terms logged by any arm, CE first."""
    found = {
        match.group(1)
        for arm in arms
        for events in arm.logs
        for event in events
        for key in event
        if (match := COMPONENT.match(key))
    }
    return sorted(found, key=lambda name: (name != CE, name))


def plot_training_curves(group: Group, stats: list[ArmStats], path: Path) -> bool:
    trained = [a for a in group.arms.values() if a.loss != BASE and any(a.logs)]
    if not trained:
        return False
    names = _names(stats)
    keys = ["loss", *(f"loss_{c}" for c in _loss_components(trained))]
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure = _figure(4.2 * columns + 1.8, 3.3 * rows)
    colours = _colours(group)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, key in zip(panels, keys, strict=False):
        for arm in trained:
            curve = _curves(arm.logs, key)
            if curve is not None:
                axes.plot(*curve, color=colours[arm.name], label=names[arm.name], linewidth=1.3)
        title = "total objective" if key == "loss" else f"{key[5:]} term (unweighted)"
        axes.set_title(title)
        axes.set_xlabel("optimiser step")
        axes.set_ylabel("loss (mean over seeds)")
        axes.grid(alpha=0.3)
    for axes in panels[len(keys) :]:
        axes.set_visible(False)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="small", title="arm")
    figure.suptitle(f"Training curves per loss term: {group.title}")
    figure.savefig(path)
    return True


def _mark_collapsed(axes: Axes, points: Sequence[tuple[float, float]], colour: Any) -> None:
    """A cross over each collapsed arm's point (labelled once per axes)."""
    if not points:
        return
    labelled = any(h.get_label() == "collapsed" for h in axes.collections)
    axes.scatter(
        [x for x, _ in points],
        [y for _, y in points],
        marker="x",
        s=90,
        color=colour,
        linewidths=2,
        zorder=4,
        label=None if labelled else "collapsed",
    )


def plot_training_sizes(reports: Sequence[GroupReport], path: Path) -> bool:
    """Exact match and IoU against the number of training examples, one line per arm, for one
    (task, model) that ran at several sizes; the untrained model is a dashed line."""
    sized = sorted(
        (r for r in reports if r.group.train_size is not None),
        key=lambda r: r.group.train_size or 0,
    )
    if len(sized) < 2:
        return False
    metrics = [m for m in SIZE_METRICS if any(m in s.estimates for r in sized for s in r.stats)]
    by_arm: dict[str, list[tuple[int, ArmStats]]] = defaultdict(list)
    colours: dict[str, Any] = {}
    for report in sized:
        colours.update(_colours(report.group))
        for s in report.stats:
            if s.arm != BASE:
                by_arm[s.arm].append((report.group.train_size or 0, s))
    base = next((s for s in sized[-1].stats if s.arm == BASE), None)
    sizes = [r.group.train_size or 0 for r in sized]
    figure = _figure(5.2 * len(metrics) + 1.8, 4.2)
    panels = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axes, metric in zip(panels, metrics, strict=True):
        for rank, (arm, found) in enumerate(by_arm.items()):
            points = [(size, s) for size, s in found if metric in s.estimates]
            estimates = [s.estimates[metric] for _, s in points]
            # Arms side by side around each size (a few percent apart on the log axis), so
            # that their intervals do not hide each other.
            dodge = 1 + 0.025 * (rank - (len(by_arm) - 1) / 2)
            points = [(size * dodge, s) for size, s in points]
            axes.errorbar(
                [size for size, _ in points],
                [100 * e.mean for e in estimates],
                yerr=_whiskers(estimates),
                marker="o",
                capsize=3,
                color=colours[arm],
                label=arm,
            )
            _mark_collapsed(
                axes,
                [
                    (size, 100 * e.mean)
                    for (size, s), e in zip(points, estimates, strict=True)
                    if s.collapsed
                ],
                colours[arm],
            )
        if base is not None and metric in base.estimates:
            axes.axhline(
                100 * base.estimates[metric].mean,
                color=LOSS_COLOURS[BASE],
                linestyle="--",
                label="untrained model",
            )
        axes.set_xscale("log")
        axes.set_xticks(sizes, [str(size) for size in sizes])
        axes.minorticks_off()
        axes.set_xlabel("training examples (log scale)")
        _percent_axis(axes, LABELS[metric])
        axes.set_title(f"{LABELS[metric]} against training size (mean, 95% CI)")
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="small", title="arm")
    group = sized[0].group
    figure.suptitle(f"{group.task} / {group.model}: {len(group.ids)} test examples per cell")
    figure.savefig(path)
    return True


def correlations(group: Group) -> dict[str, Any] | None:
    """Pearson r between the ROSCOE scores present, exact match and IoU, over every prediction
    of the group's finished cells; None when no prediction has a ROSCOE score."""
    from seglm.metrics.correlations import pearson_correlations
    from seglm.metrics.roscoe import SCORE_NAMES

    records = [record for arm in group.arms.values() for record in arm.records]
    present = [n for n in SCORE_NAMES if any(r.get(n) is not None for r in records)]
    if not present:
        return None
    columns = [*present, *(m for m in MAIN_METRICS if any(r.get(m) is not None for r in records))]
    return pearson_correlations(records, columns)


def plot_correlations(result: dict[str, Any], title: str, path: Path) -> None:
    columns = result["columns"]
    size = len(columns)
    matrix = np.eye(size)
    for pair in result["pairs"]:
        i, j = columns.index(pair["x"]), columns.index(pair["y"])
        matrix[i, j] = matrix[j, i] = np.nan if pair["r"] is None else pair["r"]
    figure = _figure(max(6.0, 1.6 + 0.62 * size), max(4.8, 1.0 + 0.55 * size))
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-1, vmax=1)
    axes.set_xticks(range(size), columns, rotation=45, ha="right")
    axes.set_yticks(range(size), columns)
    for i in range(size):
        for j in range(size):
            text = "n/a" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}"
            axes.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(np.nan_to_num(matrix[i, j])) > 0.6 else "black",
            )
    figure.colorbar(image, ax=axes, label="Pearson r")
    axes.set_title(f"{title}\nPearson r over {result['n_records']} predictions")
    figure.savefig(path)
