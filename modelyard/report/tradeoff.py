"""The accuracy–latency–size plot of a run's variants, with each target's choice marked.

One point per variant: x = p99 latency at batch 1, y = the task's primary metric, marker area
proportional to the model size, colour by format. The variant a target chose gets a ring and the
target's name beside it, so "which one goes where" reads off the picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import cycle
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from modelyard.config import EXPORT_FORMATS
from modelyard.plots import save_figure

if TYPE_CHECKING:
    from modelyard.choice import Choice
    from modelyard.measure import Measurement

# one colour per export format, in the order of the format list (matplotlib's tab10, without
# the green of an unknown format and the red of a chosen ring)
FORMAT_PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
FORMAT_COLOURS = dict(zip(EXPORT_FORMATS, cycle(FORMAT_PALETTE)))
REJECTED_COLOUR = "#b0b0b0"
CHOSEN_COLOUR = "#d62728"
# marker area in points² for the largest model; the smallest keeps a readable floor
MAX_AREA = 900.0
MIN_AREA = 40.0


def variants_plot(
    variants: Sequence[Measurement],
    choices: Mapping[str, Choice],
    path: str | Path,
    *,
    metric: str = "score",
    title: str = "Variants: accuracy, latency, size",
) -> Path:
    """Draw every variant as score against p99 latency, sized by model size.

    Args:
        variants: the measured variants.
        choices: target name -> :class:`~modelyard.choice.Choice`; chosen variants are ringed
            and labelled with the names of the targets that chose them.
        path: the PNG to write.
        metric: the y axis label (the task's primary metric, e.g. ``accuracy``).
        title: figure title.

    Returns:
        The written path.
    """
    fig = Figure(figsize=(9, 5.6))
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.11, top=0.9)
    ax = fig.add_subplot()
    shown = [m for m in variants if _is_number(m.p99_ms) and _is_number(m.score)]
    largest = max((m.size_mb for m in shown if _is_number(m.size_mb)), default=1.0) or 1.0
    chosen_by: dict[int, list[str]] = {}
    for target, choice in choices.items():
        if choice.variant is not None:
            chosen_by.setdefault(id(choice.variant), []).append(target)

    for m in shown:
        colour = REJECTED_COLOUR if m.rejected else FORMAT_COLOURS.get(m.format, "#2ca02c")
        area = max(MIN_AREA, MAX_AREA * (m.size_mb / largest if _is_number(m.size_mb) else 0.0))
        ax.scatter(
            [m.p99_ms], [m.score], s=area, c=colour, alpha=0.55, edgecolors="black", linewidths=0.6
        )
        ax.annotate(
            m.name,
            (m.p99_ms, m.score),
            xytext=(0, -14 - math.sqrt(area) / 2),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            color="#444444",
        )
        targets = _chosen_targets(m, chosen_by, choices)
        if targets:
            ax.scatter(
                [m.p99_ms],
                [m.score],
                s=area * 1.9 + 80,
                facecolors="none",
                edgecolors=CHOSEN_COLOUR,
                linewidths=2.0,
            )
            ax.annotate(
                " + ".join(targets),
                (m.p99_ms, m.score),
                xytext=(8 + math.sqrt(area) / 2, 6),
                textcoords="offset points",
                fontsize=9,
                fontweight="bold",
                color=CHOSEN_COLOUR,
            )
    _axes_limits(ax, shown)
    ax.set_xlabel("p99 latency at batch 1 (ms, incl. tokenization)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles=_legend(shown), fontsize=8, loc="best")
    if not shown:
        ax.text(0.5, 0.5, "no measured variants", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, path)


def _chosen_targets(
    m: Measurement, chosen_by: Mapping[int, list[str]], choices: Mapping[str, Choice]
) -> list[str]:
    """Targets that chose ``m``: by identity, else by (format, name) for copies of it."""
    if id(m) in chosen_by:
        return chosen_by[id(m)]
    return [
        t
        for t, c in choices.items()
        if c.variant is not None
        and (c.variant.name, c.variant.format, c.variant.bundle) == (m.name, m.format, m.bundle)
    ]


def _axes_limits(ax: Axes, shown: Sequence[Measurement]) -> None:
    """Pad the data range so big markers and labels stay inside the axes."""
    if not shown:
        return
    xs = [m.p99_ms for m in shown]
    ys = [m.score for m in shown]
    # latency from 0: a 0.1 ms gap between two 9 ms variants should look as small as it is
    ax.set_xlim(0.0, max(max(xs) * 1.15, 0.05))
    y_pad = (max(ys) - min(ys)) * 0.25 or max(abs(max(ys)) * 0.02, 0.01)
    ax.set_ylim(min(ys) - y_pad, max(ys) + y_pad)


def _legend(shown: Sequence[Measurement]) -> list[Line2D]:
    handles = []
    for fmt in sorted({m.format for m in shown if not m.rejected}):
        handles.append(_handle(FORMAT_COLOURS.get(fmt, "#2ca02c"), fmt))
    if any(m.rejected for m in shown):
        handles.append(_handle(REJECTED_COLOUR, "rejected (accuracy drop)"))
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="none",
            markeredgecolor=CHOSEN_COLOUR,
            markeredgewidth=2,
            markersize=11,
            label="chosen for a target",
        )
    )
    handles.append(Line2D([], [], linestyle="", label="marker area ∝ model size"))
    return handles


def _handle(colour: str, label: str) -> Line2D:
    return Line2D(
        [],
        [],
        marker="o",
        linestyle="",
        markerfacecolor=colour,
        markeredgecolor="black",
        alpha=0.6,
        markersize=9,
        label=label,
    )


def _is_number(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
