"""Measuring a bundle through the runtime: scores, drops, rejections, the table (no torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers.bundles import TEXTS, make_bundle

from modelyard.errors import BundleError, DataError
from modelyard.measure import (
    Measurement,
    accuracy_drop,
    format_table,
    measure_bundle,
    rejection,
    variant_name,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("models"), "binary").path


def test_drop_is_points_for_accuracy_and_percent_for_rmse() -> None:
    assert accuracy_drop("accuracy", 0.88, 0.90) == pytest.approx(2.0)
    assert accuracy_drop("accuracy", 0.91, 0.90) == pytest.approx(-1.0)
    assert accuracy_drop("micro_f1", 0.5, 0.5) == 0.0
    # rmse is lower-is-better: 10% worse
    assert accuracy_drop("rmse", 1.1, 1.0) == pytest.approx(10.0)
    assert accuracy_drop("rmse", 0.9, 1.0) == pytest.approx(-10.0)


def test_rejection_names_the_metric_and_the_limit() -> None:
    assert rejection("accuracy", 0.5, 1.0) is None
    assert rejection("accuracy", 1.0, 1.0) is None
    reason = rejection("accuracy", 2.3, 1.0)
    assert reason == "accuracy drop 2.30 points > 1"
    assert "% worse" in (rejection("rmse", 5.0, 1.0) or "")
    assert rejection("accuracy", math.inf, 1.0) is not None


def test_measure_bundle_scores_times_and_rejects(bundle_dir: Path) -> None:
    texts = TEXTS * 3
    targets = np.array([i % 2 for i in range(len(texts))], dtype=np.float32)
    labels = ["neg", "pos"]
    ref = measure_bundle(
        bundle_dir, texts, targets, "binary", labels, latency_runs=20, throughput_batches=2
    )
    assert ref.name == "fp32" and ref.format == "onnx" and ref.version == 1
    assert ref.bundle == str(bundle_dir)
    assert ref.size_mb == pytest.approx((bundle_dir / "model.onnx").stat().st_size / 2**20)
    assert 0 < ref.p50_ms <= ref.p99_ms
    assert ref.throughput > 0
    assert ref.score == ref.metrics["accuracy"] and ref.drop == 0.0 and ref.rejected is None
    # against a reference 10 points better, the same bundle is rejected with the reason
    worse = measure_bundle(
        bundle_dir,
        texts,
        targets,
        "binary",
        labels,
        reference=ref.score + 0.10,
        max_drop=1.0,
        latency_runs=5,
        throughput_batches=1,
        name="int8-dynamic",
    )
    assert worse.name == "int8-dynamic"
    assert worse.drop == pytest.approx(10.0)
    assert worse.rejected == "accuracy drop 10.00 points > 1"
    json.dumps(worse.to_dict())
    table = format_table([ref, worse], metric="accuracy")
    assert "int8-dynamic" in table and "rejected: accuracy drop" in table


def test_measure_bundle_refuses_mismatches(bundle_dir: Path) -> None:
    targets = np.zeros(len(TEXTS), dtype=np.float32)
    with pytest.raises(BundleError, match="labels"):
        measure_bundle(bundle_dir, TEXTS, targets, "binary", ["a", "b"], latency_runs=1)
    with pytest.raises(BundleError, match="task"):
        measure_bundle(bundle_dir, TEXTS, targets, "multiclass", ["neg", "pos"])
    with pytest.raises(DataError):
        measure_bundle(bundle_dir, [], targets[:0], "binary", ["neg", "pos"])
    with pytest.raises(DataError):
        measure_bundle(bundle_dir, TEXTS, targets[:1], "binary", ["neg", "pos"])


def test_to_dict_has_no_nan() -> None:
    m = Measurement("fp32", "onnx", "models/x/1", 1, 1.0, 1.0, 2.0, 10.0, {"roc_auc": math.nan})
    out = m.to_dict()
    assert out["metrics"]["roc_auc"] is None and out["score"] is None
    json.dumps(out, allow_nan=False)


def test_variant_name_from_the_manifest(bundle_dir: Path) -> None:
    from dataclasses import replace

    from modelyard.bundle import read_manifest

    manifest = read_manifest(bundle_dir)
    assert variant_name(manifest) == "fp32"
    named = replace(manifest, variant={"name": "pruned50+int8-dynamic"})
    assert variant_name(named) == "pruned50+int8-dynamic"
    tflite = replace(manifest, format="tflite", variant={"quantization": "int8-dynamic"})
    assert variant_name(tflite) == "tflite-int8-dynamic"
