"""Report plots as PNG files: confusion matrix, learning curves, a tune's trials.

Figures are drawn on the Agg canvas directly (no pyplot), so plotting never needs a display, never
touches pyplot's global figure list and works from threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def plot_confusion_matrix(
    matrix: np.ndarray, labels: Sequence[str], path: str | Path, *, title: str = "Confusion matrix"
) -> Path:
    """Draw a confusion matrix (rows = true class, columns = predicted) with counts and row %.

    Args:
        matrix: ``(C, C)`` counts.
        labels: class names, in matrix order.
        path: the PNG to write.
        title: figure title.

    Returns:
        The written path.
    """
    matrix = np.asarray(matrix)
    n = len(labels)
    size = max(4.0, 0.6 * n + 2.5)
    fig = Figure(figsize=(size, size))
    fig.subplots_adjust(left=0.18, right=0.85, bottom=0.2, top=0.9)
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    # colour by row share so a rare class is as readable as a common one
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:  # beyond that the numbers are unreadable anyway
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour)
    return save_figure(fig, path)


def plot_learning_curves(
    history: Sequence[dict[str, Any]], path: str | Path, *, title: str = "Learning curves"
) -> Path:
    """Draw train/validation loss and every validation metric per epoch.

    Args:
        history: one record per epoch (``epoch``, ``train_loss``, ``val_loss``, ``val_*``, ``lr``).
        path: the PNG to write.
        title: figure title.

    Returns:
        The written path.
    """
    epochs = [r["epoch"] for r in history]
    metric_keys = sorted(
        {k for r in history for k in r if k.startswith("val_") and k != "val_loss"}
    )
    # fixed margins: constrained/tight layout doubles the drawing time on small machines
    fig = Figure(figsize=(12, 3.8))
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.14, top=0.82, wspace=0.25)
    loss_ax, metric_ax, lr_ax = fig.subplots(1, 3)
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            loss_ax.plot(epochs, _nan(values), style, label=key, markersize=3)
    loss_ax.set_title("loss")
    for key in metric_keys:
        metric_ax.plot(epochs, _nan([r.get(key) for r in history]), "-o", label=key, markersize=3)
    metric_ax.set_title("validation metrics")
    lr_ax.plot(epochs, _nan([r.get("lr") for r in history]), "-o", markersize=3)
    lr_ax.set_title("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0), useOffset=False)
    for ax in (loss_ax, metric_ax, lr_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_trials(
    trials: Sequence[tuple[str, float, float, str]],
    path: str | Path,
    *,
    metric: str,
    title: str = "Trials",
) -> Path:
    """Each trial of a tune as a point: training time against validation score, one colour per
    candidate; pruned trials hollow, the winner ringed.

    Args:
        trials: ``(candidate, train seconds, validation score, state)``, the winner first; state
            ``complete`` or ``pruned`` (others are left out).
        path: the PNG to write.
        metric: the score's name, for the axis.

    Returns:
        The written path.
    """
    fig = Figure(figsize=(8, 4.5))
    fig.subplots_adjust(left=0.1, right=0.7, bottom=0.12, top=0.9)
    ax = fig.add_subplot()
    names = list(dict.fromkeys(t[0] for t in trials))
    colours = {n: f"C{i % 10}" for i, n in enumerate(names)}
    for name in names:
        for state, face in (("complete", colours[name]), ("pruned", "none")):
            points = [(s, v) for c, s, v, st in trials if c == name and st == state]
            if points:
                xs, ys = zip(*points, strict=True)
                label = name if state == "complete" else f"{name} (pruned)"
                ax.scatter(xs, ys, s=36, facecolors=face, edgecolors=colours[name], label=label)
    if trials and trials[0][3] == "complete":
        _, seconds, score, _ = trials[0]
        ax.scatter([seconds], [score], s=180, facecolors="none", edgecolors="black", label="best")
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title(title)
    return save_figure(fig, path)


def _nan(values: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]
