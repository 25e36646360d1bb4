"""The time budget of a tune: ``20m`` → seconds, what is left, what the next trial may take.

A tune spends its budget on trials and keeps a reserve for its last step (the winner scored on
the test file, the report). A trial starts only when the time left, less the reserve, covers the
shortest useful run its candidate has shown (setup, one epoch, its validation); it is then given
that time (at most half the budget) as ``train.max_time_s``, so it stops on time whatever it
costs per epoch.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from modelyard.errors import ConfigError

# the most of the budget one trial may take: one slow candidate never spends the whole search
TRIAL_SHARE = 0.5
# the least a trial is started with, whatever its candidate has shown
MIN_TRIAL_SHARE = 0.02
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str | float | int) -> float:
    """``90s``, ``20m``, ``1h30m``, ``1.5h`` or a plain number of seconds → seconds.

    Raises:
        ConfigError: not a positive duration.
    """
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip().lower().replace(" ", "")
        try:
            seconds = float(raw)
        except ValueError:
            parts = _PART.findall(raw)
            if not parts or "".join(n + u for n, u in parts) != raw:
                raise ConfigError(
                    f"budget {text!r}: expected a duration such as 90s, 20m, 1h30m"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise ConfigError(f"budget {text!r}: must be more than 0 seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """``754.2`` → ``12m34s``; under a minute ``41.3s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def reserve_for(total_s: float) -> float:
    """What a budget keeps for its last step: 5%, at least 5 s (the winner's test scoring, its
    plots and the report, seconds on a busy machine; a trial's last validation past its
    deadline comes out of it too)."""
    return max(5.0, 0.05 * total_s)


@dataclass
class Budget:
    """Where a tune stands against its time budget.

    Attributes:
        total_s: the budget; ``None``: no time limit (a trial count stops the tune).
        spent_before_s: what earlier sessions of the same tune spent (a resumed tune goes on
            with what they left).
        reserve_s: kept for the last step; default :func:`reserve_for`.
        started: ``time.monotonic()`` when this session started.
    """

    total_s: float | None
    spent_before_s: float = 0.0
    reserve_s: float | None = None
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.reserve_s is None:
            self.reserve_s = reserve_for(self.total_s) if self.total_s is not None else 0.0

    def spent(self, now: float | None = None) -> float:
        """Seconds spent by this tune so far, earlier sessions included."""
        now = time.monotonic() if now is None else now
        return self.spent_before_s + (now - self.started)

    def left(self, now: float | None = None) -> float | None:
        """Seconds left of the whole budget (``None``: no budget)."""
        if self.total_s is None:
            return None
        return self.total_s - self.spent(now)

    def for_trial(self, shortest_s: float = 0.0, now: float | None = None) -> float | None:
        """The time limit to give the next trial, or ``None`` when there is no budget.

        Args:
            shortest_s: the shortest useful run the trial's candidate has shown (0: unknown).

        Returns:
            Seconds; ``0.0`` when the trial cannot finish in what is left (do not start it).
        """
        left = self.left(now)
        if left is None or self.total_s is None:
            return None
        available = min(left - float(self.reserve_s or 0.0), TRIAL_SHARE * self.total_s)
        if available <= 0 or available < shortest_s:
            return 0.0
        return available
