"""Metrics against hand-computed values; ROC-AUC against a brute-force pairwise count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelyard.metrics import ClassReport, format_class_table, higher_is_better, roc_auc
from modelyard.tasks import compute_metrics, get_task, per_class_report

pytestmark = pytest.mark.unit

METRICS_BY_TASK = {
    "binary": ("accuracy", "precision", "recall", "f1", "macro_f1", "roc_auc"),
    "multiclass": ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"),
    "multilabel": ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss"),
    "regression": ("mae", "rmse", "r2"),
}


def confusion_matrix(task: str, t: np.ndarray, s: np.ndarray, labels: list[str]) -> np.ndarray:
    matrix = get_task(task).confusion(t, get_task(task).flat(s), labels)
    assert matrix is not None
    return matrix


def brute_force_auc(t: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[t == 1], s[t == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_binary_by_hand() -> None:
    t = np.array([1, 0, 1, 1, 0, 0], dtype=np.float32)
    s = np.array([0.9, 0.4, 0.35, 0.8, 0.6, 0.1], dtype=np.float32)  # preds 1 0 0 1 1 0
    m = compute_metrics("binary", t, s[:, None], ["neg", "pos"])
    assert set(m) == set(METRICS_BY_TASK["binary"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(7 / 9)
    assert all(isinstance(v, float) for v in m.values())


def test_binary_threshold_and_zero_division() -> None:
    t = np.array([1, 0, 1], dtype=np.float32)
    s = np.array([0.2, 0.1, 0.3])
    m = compute_metrics("binary", t, s, ["a", "b"])  # nothing predicted positive
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["roc_auc"] == 1.0
    assert compute_metrics("binary", t, s, ["a", "b"], threshold=0.15)["recall"] == 1.0


def test_roc_auc_ties_and_brute_force() -> None:
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.7, 0.2])) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = rng.integers(0, 2, size=60)
        s = np.round(rng.random(60), 1)  # many ties
        assert roc_auc(t, s) == pytest.approx(brute_force_auc(t, s))
    assert math.isnan(roc_auc(np.ones(4), np.arange(4.0)))


def multiclass_case() -> tuple[np.ndarray, np.ndarray, list[str]]:
    t = np.array([0, 1, 2, 2, 1, 0, 2])
    preds = np.array([0, 2, 2, 1, 1, 0, 2])
    scores = np.eye(4, dtype=np.float32)[preds] * 0.7 + 0.075
    return t, scores, ["a", "b", "c", "unused"]


def test_multiclass_by_hand() -> None:
    t, scores, labels = multiclass_case()
    m = compute_metrics("multiclass", t, scores, labels)
    assert set(m) == set(METRICS_BY_TASK["multiclass"])
    assert m["accuracy"] == pytest.approx(5 / 7)
    # per class P=R=F1: a 1, b 1/2, c 2/3; "unused" has no targets and no predictions
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m["macro_recall"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m["macro_f1"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 1 + 2 * 0.5 + 3 * 2 / 3) / 7)


def test_confusion_matrix_and_report() -> None:
    t, scores, labels = multiclass_case()
    cm = confusion_matrix("multiclass", t, scores, labels)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[2, 0, 0, 0], [0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    report = per_class_report("multiclass", t, scores, labels)
    assert [r.label for r in report] == labels
    assert report[1] == ClassReport("b", 0.5, 0.5, 0.5, 2)
    assert report[3] == ClassReport("unused", 0.0, 0.0, 0.0, 0)
    binary = confusion_matrix(
        "binary", np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.1, 0.2]), ["n", "p"]
    )
    assert binary.tolist() == [[1, 1], [1, 1]]
    # a label set has no single predicted class, a number no class at all
    assert get_task("multilabel").confusion(np.zeros((1, 2)), np.zeros((1, 2)), ["a", "b"]) is None
    assert get_task("regression").confusion(np.zeros(1), np.zeros(1), []) is None


def test_multilabel_by_hand() -> None:
    t = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    s = np.array([[0.9, 0.2, 0.4], [0.1, 0.6, 0.3], [0.7, 0.49, 0.5]], dtype=np.float32)
    m = compute_metrics("multilabel", t, s, ["x", "y", "z"])
    assert set(m) == set(METRICS_BY_TASK["multilabel"])
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    assert m["micro_f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["hamming_loss"] == pytest.approx(1 / 3)
    report = per_class_report("multilabel", t, s, ["x", "y", "z"])
    assert [(r.label, r.support) for r in report] == [("x", 2), ("y", 2), ("z", 1)]
    assert report[1].precision == 1.0 and report[1].recall == 0.5


def test_regression_by_hand() -> None:
    t = np.array([1, 2, 3, 4], dtype=np.float32)
    p = np.array([[1.5], [2], [2], [5]], dtype=np.float32)
    m = compute_metrics("regression", t, p, [])
    assert m == pytest.approx({"mae": 0.625, "rmse": 0.75, "r2": 0.55})
    assert compute_metrics("regression", np.ones(3), np.ones(3), [])["r2"] == 1.0
    assert compute_metrics("regression", np.ones(3), np.zeros(3), [])["r2"] == 0.0
    assert per_class_report("regression", t, p, []) == []


def test_empty_inputs_give_zeros_without_warnings() -> None:
    m = compute_metrics(
        "multiclass", np.zeros(0, dtype=np.int64), np.zeros((0, 3)), ["a", "b", "c"]
    )
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0


def test_format_report_is_aligned() -> None:
    reports = [
        ClassReport("great", 0.9, 0.8, 0.847, 658),
        ClassReport("other", 0.7, 0.75, 0.724, 342),
    ]
    text = format_class_table(reports)
    lines = text.splitlines()
    assert lines[0].split() == ["label", "precision", "recall", "f1", "support"]
    assert "great" in lines[1] and "0.900" in lines[1] and lines[1].endswith("658")
    assert lines[3] == ""
    assert lines[4].startswith("macro avg") and "0.800" in lines[4]
    assert lines[5].startswith("weighted avg") and lines[5].endswith("1000")
    widths = {len(line) for line in lines if line}
    assert len(widths) == 1


def test_primary_and_direction() -> None:
    primary = {task: get_task(task).primary_metric for task in METRICS_BY_TASK}
    assert primary == {
        "binary": "accuracy",
        "multiclass": "accuracy",
        "multilabel": "micro_f1",
        "regression": "rmse",
    }
    for task, name in primary.items():
        assert name in METRICS_BY_TASK[task]
    assert higher_is_better("accuracy") and higher_is_better("val_roc_auc")
    assert not higher_is_better("val_loss") and not higher_is_better("rmse")
    assert not higher_is_better("hamming_loss") and higher_is_better("r2")
