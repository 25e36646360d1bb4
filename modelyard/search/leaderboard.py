"""The leaderboard: one row per finished trial, best first, as a table and as JSON.

Rows are ordered by state (completed, then pruned, then failed), then by validation score in the
metric's direction, then by slot: the same trials always give the same board. Only the winner
(the first row) carries a test score, measured once, after the search.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelyard.atomic import atomic_write_text
from modelyard.metrics import json_safe, proportion_interval

STATES = ("complete", "pruned", "failed")


@dataclass
class Entry:
    """One trial as the leaderboard shows it.

    Attributes:
        slot: the trial's place in the search (0 first).
        candidate: the portfolio entry it trained.
        params: the sampled values (names without the candidate prefix).
        state: ``complete``, ``pruned`` (its validation curve lagged) or ``failed``.
        score: its best validation score (``None`` when it never validated).
        epochs: epochs trained.
        train_s: wall time of the trial (setup, training, validation).
        size_mb: the best checkpoint's weights.
        latency_ms: median time to score one text with the torch model.
        run_dir: the trial's run directory.
        test: the winner's test metrics (``None`` for the others).
        test_size: how many test texts they were measured on.
        error: why a trial failed.
    """

    slot: int
    candidate: str
    params: dict[str, Any]
    state: str
    score: float | None
    epochs: int = 0
    train_s: float = 0.0
    size_mb: float | None = None
    latency_ms: float | None = None
    run_dir: str = ""
    test: dict[str, float] | None = None
    test_size: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def same_result(self) -> tuple[Any, ...]:
        """What two tunes with the same seed and trials must agree on (no timings)."""
        return (
            self.slot,
            self.candidate,
            self.params,
            self.state,
            self.score,
            self.epochs,
            self.test,
        )


def rank(entries: Sequence[Entry], *, higher_is_better: bool) -> list[Entry]:
    """Best first: completed by score, then pruned by score, then failed; ties by slot."""

    def key(e: Entry) -> tuple[int, float, int]:
        score = e.score if e.score is not None and math.isfinite(e.score) else None
        value = math.inf if score is None else (-score if higher_is_better else score)
        return (STATES.index(e.state), value, e.slot)

    return sorted(entries, key=key)


def winner(entries: Sequence[Entry], *, higher_is_better: bool) -> Entry | None:
    """The best completed trial, or ``None`` when none completed."""
    ranked = rank(entries, higher_is_better=higher_is_better)
    return ranked[0] if ranked and ranked[0].state == "complete" else None


def test_cell(entry: Entry, metric: str) -> str:
    """``0.8420 (0.821–0.861)`` for the winner's test metric with its 95% interval."""
    if entry.test is None or metric not in entry.test:
        return ""
    value = entry.test[metric]
    if metric == "accuracy" and entry.test_size:
        lo, hi = proportion_interval(value, entry.test_size)
        return f"{value:.4f} ({lo:.3f}–{hi:.3f})"
    return f"{value:.4f}"


def format_board(entries: Sequence[Entry], metric: str) -> str:
    """The leaderboard as a fixed-width table (``metric``: the task's primary metric)."""
    head = [
        "#",
        "candidate",
        "state",
        f"val {metric}",
        f"test {metric} (95% CI)",
        "epochs",
        "train",
        "size MB",
        "ms/text",
    ]
    rows = [head]
    for i, e in enumerate(entries, 1):
        rows.append(
            [
                str(i),
                e.candidate,
                e.state,
                "–" if e.score is None else f"{e.score:.4f}",
                test_cell(e, metric) or "–",
                str(e.epochs),
                f"{e.train_s:.1f}s",
                "–" if e.size_mb is None else f"{e.size_mb:.2f}",
                "–" if e.latency_ms is None else f"{e.latency_ms:.2f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def write_board(entries: Sequence[Entry], path: Path, **extra: Any) -> Path:
    """``leaderboard.json``: the rows, best first, and ``extra`` (metric, budget...)."""
    rows = [json_safe(asdict(e)) for e in entries]
    atomic_write_text(path, json.dumps({**extra, "entries": rows}, indent=2) + "\n")
    return path


def read_board(path: Path) -> list[Entry]:
    """The rows of a ``leaderboard.json``, best first."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))["entries"]
    return [Entry(**row) for row in rows]
