"""Deployment platform choice from hand-made measurements: fits, ties, each budget, no answer."""

from __future__ import annotations

import math
from typing import Any

import pytest

from modelyard.choice import Choice, choose
from modelyard.config import TargetConfig
from modelyard.measure import Measurement

pytestmark = pytest.mark.unit


def variant(
    name: str,
    *,
    fmt: str = "onnx",
    size: float = 1.0,
    p99: float = 1.0,
    score: float = 0.9,
    drop: float = 0.0,
    rejected: str | None = None,
    metric: str = "accuracy",
) -> Measurement:
    return Measurement(
        name=name,
        format=fmt,
        bundle=f"models/m/{abs(hash(name)) % 97 + 1}",
        version=1,
        size_mb=size,
        p50_ms=p99 / 2,
        p99_ms=p99,
        throughput=1000.0,
        metrics={metric: score},
        score=score,
        drop=drop,
        rejected=rejected,
    )


def target(**budgets: Any) -> TargetConfig:
    return TargetConfig(**budgets)


# ~ what `modelyard run` measures for a small LSTM: fp32, three quantized, one pruned
VARIANTS = [
    variant("fp32", size=4.0, p99=9.0, score=0.912, drop=0.0),
    variant("int8-dynamic", size=1.1, p99=6.0, score=0.908, drop=0.4),
    variant("int8-static", size=1.0, p99=4.0, score=0.885, drop=2.7, rejected="drop 2.7 > 1"),
    variant("fp16", size=2.0, p99=12.0, score=0.911, drop=0.1),
    variant("pruned30+int8-dynamic", size=0.8, p99=5.5, score=0.905, drop=0.7),
    variant("tflite-fp32", fmt="tflite", size=4.1, p99=7.0, score=0.912, drop=0.0),
    variant("tflite-int8-dynamic", fmt="tflite", size=1.2, p99=3.0, score=0.907, drop=0.5),
]


def pick(t: TargetConfig, variants: list[Measurement] = VARIANTS, **kw: Any) -> Choice:
    return choose({"t": t}, variants, **kw)["t"]


def test_picks_most_accurate_within_every_budget() -> None:
    choices = choose(
        {
            "server": target(format="onnx", max_p99_ms=10),
            "edge": target(format="onnx", max_size_mb=1.5),
            "mobile": target(format="tflite", max_size_mb=2),
        },
        VARIANTS,
    )
    assert list(choices) == ["server", "edge", "mobile"]
    assert choices["server"].variant is not None and choices["server"].variant.name == "fp32"
    assert choices["edge"].variant is not None
    assert choices["edge"].variant.name == "int8-dynamic"  # pruned is smaller but less accurate
    assert choices["mobile"].variant is not None
    assert choices["mobile"].variant.name == "tflite-int8-dynamic"
    assert all(c.ok for c in choices.values())
    assert "int8-dynamic" in choices["edge"].reason and "most accurate" in choices["edge"].reason


def test_no_budgets_takes_the_most_accurate_of_the_format() -> None:
    assert pick(target(format="onnx")).variant is VARIANTS[0]
    assert "no budgets" in pick(target(format="onnx")).reason


def test_every_budget_must_hold_at_once() -> None:
    # fp32 too big, fp16 too slow: int8-dynamic is the best that meets both
    choice = pick(target(max_size_mb=2.0, max_p99_ms=8.0))
    assert choice.variant is not None and choice.variant.name == "int8-dynamic"


def test_limits_are_inclusive() -> None:
    choice = pick(target(max_size_mb=1.1, max_p99_ms=6.0, max_accuracy_drop=0.4))
    assert choice.variant is not None and choice.variant.name == "int8-dynamic"


def test_target_accuracy_drop_budget() -> None:
    choice = pick(target(max_size_mb=1.5, max_accuracy_drop=0.5))
    assert choice.variant is not None and choice.variant.name == "int8-dynamic"
    choice = pick(target(max_size_mb=1.5, max_accuracy_drop=0.35))
    assert choice.variant is None
    assert choice.reason == (
        "t: no variant fits: no onnx variant meets every budget at once; closest int8-dynamic "
        "has drop 0.4 points > max_accuracy_drop 0.35"
    )


def test_rejected_variants_are_never_chosen() -> None:
    # int8-static is the only one under 1.05 MB except pruned; pruned wins as int8-static is out
    choice = pick(target(max_size_mb=1.05))
    assert choice.variant is not None and choice.variant.name == "pruned30+int8-dynamic"
    only_rejected = [VARIANTS[2]]
    choice = pick(target(), only_rejected)
    assert choice.variant is None
    assert choice.reason == "t: every onnx variant was rejected (int8-static: drop 2.7 > 1)"


def test_ties_go_to_the_smaller_then_the_faster_variant() -> None:
    same = [
        variant("a", size=2.0, p99=1.0, score=0.9),
        variant("b", size=1.0, p99=5.0, score=0.9),
        variant("c", size=1.0, p99=3.0, score=0.9),
        variant("d", size=0.5, p99=0.5, score=0.89),
    ]
    choice = pick(target(), same)
    assert choice.variant is not None and choice.variant.name == "c"


def test_size_budget_nobody_meets_names_the_smallest_and_the_excess() -> None:
    variants = [
        variant("fp32", size=48.0, p99=5.0),
        variant("int8-dynamic", size=12.3, p99=3.0, score=0.89, drop=1.0),
    ]
    choice = choose({"edge": target(format="onnx", max_size_mb=10)}, variants)["edge"]
    assert choice.variant is None and not choice.ok
    assert choice.reason == (
        "edge: no variant fits: smallest onnx variant int8-dynamic is 12.3 MB > max_size_mb 10"
    )
    [miss] = choice.misses
    assert (miss.variant, miss.budget, miss.limit) == ("int8-dynamic", "max_size_mb", 10.0)
    assert miss.over == pytest.approx(2.3)
    assert choice.candidates == 2


def test_latency_budget_nobody_meets() -> None:
    choice = pick(target(max_p99_ms=2.5))
    assert choice.variant is None
    assert choice.reason == (
        "t: no variant fits: fastest onnx variant pruned30+int8-dynamic has p99 5.5 ms > "
        "max_p99_ms 2.5"
    )


def test_every_impossible_budget_is_named() -> None:
    choice = pick(target(max_size_mb=0.5, max_p99_ms=1.0, max_accuracy_drop=0.5))
    assert choice.variant is None
    assert "smallest onnx variant pruned30+int8-dynamic is 0.8 MB > max_size_mb 0.5" in (
        choice.reason
    )
    assert "fastest onnx variant pruned30+int8-dynamic has p99 5.5 ms > max_p99_ms 1" in (
        choice.reason
    )
    # the accuracy budget alone is met (fp32 drops nothing), so it is not blamed
    assert "max_accuracy_drop" not in choice.reason
    assert [m.budget for m in choice.misses] == ["max_size_mb", "max_p99_ms"]


def test_budgets_met_one_at_a_time_but_not_together() -> None:
    variants = [
        variant("big-fast", size=5.0, p99=1.0),
        variant("small-slow", size=1.0, p99=30.0),
        variant("middle", size=2.5, p99=12.0),
    ]
    choice = pick(target(max_size_mb=2.0, max_p99_ms=10.0), variants)
    assert choice.variant is None
    # each misses one budget; middle misses by the least (25% + 20% vs 150% or 200%)
    assert choice.reason == (
        "t: no variant fits: no onnx variant meets every budget at once; closest middle has "
        "size 2.5 MB > max_size_mb 2, p99 12 ms > max_p99_ms 10"
    )
    assert [(m.variant, m.budget) for m in choice.misses] == [
        ("middle", "max_size_mb"),
        ("middle", "max_p99_ms"),
    ]


def test_no_variant_of_the_format() -> None:
    onnx_only = [v for v in VARIANTS if v.format == "onnx"]
    choice = choose({"mobile": target(format="tflite", max_size_mb=5)}, onnx_only)["mobile"]
    assert choice.variant is None
    assert choice.reason == (
        "mobile: no tflite variant to choose from (only onnx variants were measured)"
    )
    choice = choose({"mobile": target(format="tflite")}, [])["mobile"]
    assert choice.reason == "mobile: no tflite variant to choose from (none was measured)"


def test_no_targets_no_choices() -> None:
    assert choose({}, VARIANTS) == {}


def test_regression_lower_rmse_wins() -> None:
    variants = [
        variant("fp32", size=4.0, score=0.50, metric="rmse"),
        variant("int8-dynamic", size=1.0, score=0.52, drop=4.0, metric="rmse"),
        variant("fp16", size=2.0, score=0.49, drop=-2.0, metric="rmse"),
    ]
    # read from the metrics: rmse is lower-is-better
    choice = pick(target(), variants)
    assert choice.variant is not None and choice.variant.name == "fp16"
    assert pick(target(max_size_mb=1.5), variants).variant is variants[1]
    # an explicit direction wins over the inferred one
    choice = pick(target(), variants, higher_is_better=True)
    assert choice.variant is not None and choice.variant.name == "int8-dynamic"
    # the drop of a lower-is-better metric is a relative %, and the message says so
    choice = pick(target(max_size_mb=1.5, max_accuracy_drop=3.5), variants)
    assert choice.reason.endswith("closest int8-dynamic has drop 4 % > max_accuracy_drop 3.5")


def test_nan_score_or_latency_never_wins_or_fits() -> None:
    variants = [
        variant("broken", size=1.0, p99=float("nan"), score=float("nan")),
        variant("fine", size=2.0, p99=3.0, score=0.8),
    ]
    choice = pick(target(), variants)
    assert choice.variant is not None and choice.variant.name == "fine"
    choice = pick(target(max_p99_ms=10, max_size_mb=1.5), variants)
    assert choice.variant is None
    # "broken" misses only the latency budget, but by an unknown amount: "fine" is closer
    assert [(m.variant, m.budget) for m in choice.misses] == [("fine", "max_size_mb")]
    assert _misses_nan(variants[0], TargetConfig(max_p99_ms=10))


def _misses_nan(m: Measurement, t: TargetConfig) -> bool:
    choice = pick(t, [m])
    return choice.variant is None and math.isnan(choice.misses[0].value)


def test_choice_to_dict_is_json_ready() -> None:
    chosen = pick(target(max_size_mb=1.5))
    assert chosen.to_dict() == {
        "target": "t",
        "variant": "int8-dynamic",
        "bundle": VARIANTS[1].bundle,
        "version": 1,
        "alias": "t",
        "reason": chosen.reason,
        "misses": [],
        "candidates": 4,  # the onnx variants, less the rejected one
    }
    missed = pick(target(max_size_mb=0.1)).to_dict()
    assert missed["variant"] is None and missed["bundle"] is None
    assert missed["misses"][0]["budget"] == "max_size_mb"
    assert missed["misses"][0]["over"] == pytest.approx(0.7)


def _scored(name: str, score: float, size: float, n: int = 1000) -> Measurement:
    m = variant(name, score=score, size=size)
    m.num_scored = n
    return m


def test_a_difference_inside_the_noise_goes_to_the_smaller_variant() -> None:
    # the server case that was reproduced: int8 "won" by 2 texts of 1,000
    fp32 = _scored("fp32", 0.737, size=5.1)
    int8 = _scored("int8-static", 0.739, size=1.3)
    fp16 = _scored("fp16", 0.736, size=2.6)
    choice = choose({"server": target()}, [fp32, fp16, int8])["server"]
    assert choice.variant is int8  # the smallest of the three tied ones
    assert "within 2.72 points of the best" in choice.reason
    assert "1.96·√(p(1−p)/n)" in choice.reason and "1000 texts" in choice.reason
    # fp32 would win a plain most-accurate contest against fp16; inside the margin size decides
    choice = choose({"server": target()}, [fp32, fp16])["server"]
    assert choice.variant is fp16


def test_a_real_difference_still_wins() -> None:
    fp32 = _scored("fp32", 0.80, size=5.0)
    int8 = _scored("int8-dynamic", 0.70, size=1.3)
    choice = choose({"server": target()}, [fp32, int8])["server"]
    assert choice.variant is fp32
    assert "the most accurate on validation by more than the 95% margin" in choice.reason


def test_lower_is_better_scores_have_no_margin() -> None:
    a = _scored("fp32", 0.50, size=5.0)
    b = _scored("int8-dynamic", 0.51, size=1.0)
    a.metrics = {"rmse": 0.50}
    b.metrics = {"rmse": 0.51}
    choice = choose({"server": target()}, [a, b], higher_is_better=False)["server"]
    assert choice.variant is a
