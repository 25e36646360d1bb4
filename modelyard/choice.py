"""Deployment platform choice: per target, the most accurate variant that fits its budgets.

A config's ``targets:`` section names the places a model must run (``server``, ``edge``,
``mobile``), each with a bundle format and budgets: model size, p99 latency at batch 1, accuracy
lost against the fp32 reference. :func:`choose` takes the measured variants and, per target,
either picks one or says plainly which budget no variant could meet and by how much.

This module is pure (no torch, no files): it reads numbers off measurements, so it is unit-tested
with hand-made ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from modelyard.metrics import higher_is_better
from modelyard.tasks import primary_metrics

if TYPE_CHECKING:
    from modelyard.config import TargetConfig
    from modelyard.measure import Measurement


@dataclass(frozen=True)
class Budget:
    """One budget of a target: which measurement it caps, and how to talk about it."""

    key: str  # the TargetConfig field, e.g. "max_size_mb"
    value: Callable[[Measurement], float]
    label: str  # what is measured: "size"
    unit: str  # printed after a value: "12.3 MB"
    best: str  # the variant closest to this budget: "smallest"
    verb: str  # how the closest variant is described: "is 12.3 MB"
    floor: bool = False  # the limit is a least value (tokens/s), not a most

    def fits(self, value: float, limit: float) -> bool:
        """Whether a measured value meets the limit (NaN never does)."""
        return value >= limit if self.floor else value <= limit


# The accuracy drop is in points for higher-is-better metrics and in relative % for
# lower-is-better ones (rmse); the unit is set per call, see _budgets().
BUDGETS: tuple[Budget, ...] = (
    Budget("max_size_mb", lambda m: m.size_mb, "size", "MB", "smallest", "is"),
    Budget("max_p99_ms", lambda m: m.p99_ms, "p99", "ms", "fastest", "has p99"),
    Budget("max_accuracy_drop", lambda m: m.drop, "drop", "points", "most accurate", "drops"),
    # generative variants: throughput is decode tokens/s, p50 the time to the first token
    Budget(
        "min_tokens_per_s",
        lambda m: m.throughput,
        "speed",
        "tokens/s",
        "fastest",
        "decodes",
        floor=True,
    ),
    Budget("max_ttft_ms", lambda m: m.p50_ms, "TTFT", "ms", "quickest", "has TTFT"),
)


@dataclass(frozen=True)
class BudgetMiss:
    """A variant over one budget: ``value`` measured, ``limit`` allowed."""

    variant: str
    budget: str
    label: str
    value: float
    limit: float
    unit: str
    floor: bool = False

    @property
    def over(self) -> float:
        """By how much the value misses the limit (same unit; positive)."""
        return self.limit - self.value if self.floor else self.value - self.limit

    def __str__(self) -> str:
        sign = "<" if self.floor else ">"
        return (
            f"{self.label} {_num(self.value)} {self.unit} {sign} {self.budget} {_num(self.limit)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "budget": self.budget,
            "value": self.value,
            "limit": self.limit,
            "over": self.over,
        }


@dataclass
class Choice:
    """What :func:`choose` decided for one target.

    Attributes:
        target: the target's name (a key of ``config.targets``).
        variant: the chosen measurement, or ``None`` when no variant fits.
        reason: one plain sentence: why this variant, or which budget failed and by how much.
        misses: when nothing fits, the budget(s) the closest variant(s) failed.
        candidates: how many accepted variants of the target's format were considered.
    """

    target: str
    variant: Measurement | None
    reason: str
    misses: list[BudgetMiss] = field(default_factory=list)
    candidates: int = 0

    @property
    def ok(self) -> bool:
        return self.variant is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the chosen variant by name (the full measurement is listed elsewhere)."""
        return {
            "target": self.target,
            "variant": self.variant.name if self.variant is not None else None,
            "bundle": self.variant.bundle if self.variant is not None else None,
            "version": self.variant.version if self.variant is not None else None,
            "alias": self.target if self.variant is not None else None,
            "reason": self.reason,
            "misses": [m.to_dict() for m in self.misses],
            "candidates": self.candidates,
        }


def choose(
    targets: Mapping[str, TargetConfig],
    variants: Sequence[Measurement],
    *,
    higher_is_better: bool | None = None,
) -> dict[str, Choice]:
    """Pick, per target, the most accurate variant that fits the target's budgets.

    Candidates are the variants of the target's format that were not rejected (a variant is
    rejected when its accuracy drop exceeds ``compress.max_accuracy_drop``). A candidate fits when
    it meets every budget the target sets (``max_size_mb``, ``max_p99_ms``,
    ``max_accuracy_drop``; an unset budget is no limit). Scores are on the selection texts (the
    validation split), never the test file. Among the variants that fit, those whose score is
    within :func:`score_margin` of the best (the 95% margin of the best score on its texts)
    count as equally accurate, and the smallest of them wins, then the lowest p99 latency, then
    the best score, then the name. The reason says which rule decided.

    Args:
        targets: target name -> :class:`~modelyard.config.TargetConfig` (``config.targets``).
        variants: the measured variants of every format.
        higher_is_better: whether a larger score is better; default: read from the variants'
            metrics (the task's primary metric, e.g. ``accuracy`` yes, ``rmse`` no).

    Returns:
        Target name -> :class:`Choice`, in the order of ``targets``. A choice without a variant
        says in its ``reason`` which budget failed, by how much, for the closest variant.
    """
    higher = _infer_higher_is_better(variants) if higher_is_better is None else higher_is_better
    return {name: _choose_one(name, target, variants, higher) for name, target in targets.items()}


def _choose_one(
    name: str, target: TargetConfig, variants: Sequence[Measurement], higher: bool
) -> Choice:
    of_format = [m for m in variants if m.format == target.format]
    if not of_format:
        built = sorted({m.format for m in variants})
        have = f"only {', '.join(built)} variants were measured" if built else "none was measured"
        return Choice(name, None, f"{name}: no {target.format} variant to choose from ({have})")
    candidates = [m for m in of_format if m.rejected is None]
    if not candidates:
        why = "; ".join(f"{m.name}: {m.rejected}" for m in of_format)
        return Choice(name, None, f"{name}: every {target.format} variant was rejected ({why})")
    budgets = _budgets(target, higher)
    fitting = [m for m in candidates if not _misses(m, budgets)]
    if not fitting:
        return _explain_none(name, target.format, candidates, budgets)
    best = min(fitting, key=lambda m: _rank(m, higher))
    margin = score_margin(best, higher)
    # a difference inside the noise of the selection texts is no difference: the smaller, then
    # faster, of the variants as accurate as the best wins
    tied = [m for m in fitting if _within(m, best, margin, higher)]
    pick = min(tied, key=lambda m: (_key(m.size_mb), _key(m.p99_ms), _rank(m, higher)))
    within = "within budget" if budgets else "(no budgets set)"
    if len(tied) > 1:
        why = (
            f"the smallest of {len(tied)} variants whose validation score is within "
            f"{_num(margin * 100)} points of the best ({best.name} {_num(best.score)}; the 95% "
            f"margin on {best.num_scored} texts, {MARGIN_RULE})"
        )
    else:
        why = "the most accurate on validation" + (
            f" by more than the 95% margin ({_num(margin * 100)} points)" if margin else ""
        )
    return Choice(
        name,
        pick,
        f"{name}: {pick.name}, {why}; {len(fitting)}/{len(candidates)} {target.format} variants "
        f"{within} (score {_num(pick.score)}, {_num(pick.size_mb)} MB, p99 {_num(pick.p99_ms)} ms)",
        candidates=len(candidates),
    )


MARGIN_RULE = "1.96·√(p(1−p)/n)"


def score_margin(m: Measurement, higher: bool) -> float:
    """How far below ``m``'s score another variant may be and still count as equally accurate.

    For a higher-is-better score that is a proportion of texts (accuracy, F1: in [0, 1]) it is
    the half-width of the normal 95% interval of ``m.score`` on its ``num_scored`` selection
    texts, :data:`MARGIN_RULE`; for other scores (rmse) 0: the best score wins outright.
    """
    p, n = m.score, m.num_scored
    if not higher or n <= 0 or not 0.0 <= p <= 1.0:
        return 0.0
    return 1.96 * math.sqrt(p * (1.0 - p) / n)


def _within(m: Measurement, best: Measurement, margin: float, higher: bool) -> bool:
    gap = best.score - m.score if higher else m.score - best.score
    return gap <= margin


def _explain_none(
    name: str,
    fmt: str,
    candidates: Sequence[Measurement],
    budgets: Sequence[tuple[Budget, float]],
) -> Choice:
    """Say which budget no candidate meets (with the closest one), or, when each budget alone is
    met by some variant but none meets all, which budgets the closest variant misses."""
    parts: list[str] = []
    misses: list[BudgetMiss] = []
    for budget, limit in budgets:
        sign = -1.0 if budget.floor else 1.0
        closest = min(candidates, key=lambda m: (_key(sign * budget.value(m)), m.name))
        value = budget.value(closest)
        if not budget.fits(value, limit):
            misses.append(_miss(closest, budget, limit))
            parts.append(
                f"{budget.best} {fmt} variant {closest.name} {budget.verb} {_num(value)} "
                f"{budget.unit} {'<' if budget.floor else '>'} {budget.key} {_num(limit)}"
            )
    if not parts:
        # every budget alone is met by some variant; the closest misses by the least in all,
        # each miss counted relative to its limit (+25% size and +20% p99 beat +150% size)
        def distance(m: Measurement) -> tuple[float, int, str]:
            found = _misses(m, budgets)
            return _key(sum(x.over / x.limit for x in found)), len(found), m.name

        closest = min(candidates, key=distance)
        misses = _misses(closest, budgets)
        parts.append(
            f"no {fmt} variant meets every budget at once; closest {closest.name} has "
            + ", ".join(str(x) for x in misses)
        )
    return Choice(
        name,
        None,
        f"{name}: no variant fits: " + "; ".join(parts),
        misses=misses,
        candidates=len(candidates),
    )


def _budgets(target: TargetConfig, higher: bool) -> list[tuple[Budget, float]]:
    """The budgets the target sets, with their limits."""
    found = []
    for budget in BUDGETS:
        limit = getattr(target, budget.key)
        if limit is None:
            continue
        if budget.key == "max_accuracy_drop" and not higher:
            budget = replace(budget, unit="%")
        found.append((budget, float(limit)))
    return found


def _miss(m: Measurement, budget: Budget, limit: float) -> BudgetMiss:
    value = budget.value(m)
    return BudgetMiss(m.name, budget.key, budget.label, value, limit, budget.unit, budget.floor)


def _misses(m: Measurement, budgets: Sequence[tuple[Budget, float]]) -> list[BudgetMiss]:
    return [_miss(m, b, limit) for b, limit in budgets if not b.fits(b.value(m), limit)]


def _rank(m: Measurement, higher: bool) -> tuple[float, float, float, str]:
    score = -m.score if higher else m.score
    return _key(score), _key(m.size_mb), _key(m.p99_ms), m.name


def _key(value: float) -> float:
    """Sort key that puts NaN last (a NaN score is no score)."""
    return math.inf if math.isnan(value) else value


def _infer_higher_is_better(variants: Sequence[Measurement]) -> bool:
    """Which way the score points: the primary metric whose value the score is."""
    for m in variants:
        for metric in primary_metrics():
            if metric in m.metrics and m.metrics[metric] == m.score:
                return higher_is_better(metric)
    return True


def _num(value: float) -> str:
    """A number as a person reads it: 3 significant digits, no exponent for usual sizes."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f}" if 100 <= abs(value) < 1e6 else f"{value:.3g}"
