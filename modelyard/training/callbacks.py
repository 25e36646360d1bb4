"""Per-epoch decisions: which checkpoint is best, and when to stop early.

Both are small state machines whose state is plain numbers, so it goes into the checkpoint and a
resumed run decides exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from modelyard.errors import ConfigError


def metric_mode(name: str) -> str:
    """``min`` or ``max`` for a monitored name such as ``val_loss`` or ``val_accuracy``."""
    from modelyard.metrics import higher_is_better

    return "max" if higher_is_better(name.removeprefix("train_")) else "min"


def resolve_monitor(name: str, available: list[str], key: str) -> str:
    """Map a configured monitor to a record key (``accuracy`` means ``val_accuracy``).

    Raises:
        ConfigError: the name is not among ``available``; the message lists the valid ones.
    """
    for candidate in (name, f"val_{name}"):
        if candidate in available:
            return candidate
    raise ConfigError(f"{key}: unknown metric '{name}'; valid: {', '.join(available)}")


@dataclass
class BestTracker:
    """Remembers the best value of a monitored metric and the epoch it came from."""

    monitor: str
    mode: str  # "min" | "max"
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best."""
        if not self.improved(value):
            return False
        self.best, self.best_epoch = float(value), epoch
        return True

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], int(state["best_epoch"])


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement larger than ``min_delta``."""

    tracker: BestTracker
    patience: int
    wait: int = 0
    stopped_epoch: int | None = None

    def step(self, record: dict[str, Any]) -> bool:
        """Feed one epoch's record; True when training should stop now."""
        if self.tracker.update(float(record[self.tracker.monitor]), int(record["epoch"])):
            self.wait = 0
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = int(record["epoch"])
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.wait = int(state["wait"])
        self.stopped_epoch = state["stopped_epoch"]
