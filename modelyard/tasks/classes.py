"""Tasks with one class per text: ``binary`` (one probability of the positive class) and
``multiclass`` (a softmax over the classes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.metrics import (
    ClassCounts,
    ClassReport,
    binary_metrics,
    confusion_counts,
    multiclass_metrics,
)
from modelyard.tasks.base import Lookup, Prediction, Starter, Task, as_rows, ranked
from modelyard.tasks.parsing import parse_name


class SingleClass(Task):
    """One class per text; what binary and multiclass share."""

    stratify = "class"
    min_classes = 2
    has_confusion = True

    def parse_label(self, value: Any, delimiter: str | None) -> Any:
        return parse_name(value, self.name)

    def check_classes(self, classes: Sequence[str], found: Sequence[str], where: str) -> None:
        super().check_classes(classes, found, where)
        distinct = sorted(set(found))
        if len(distinct) < 2:
            # configured labels make the class count right; a model trained on one class
            # still learns nothing but that class
            raise DataError(
                f"{where}: every training label is {', '.join(distinct) or '(none)'}; a "
                f"{self.name} task needs at least 2 classes in the training data"
            )

    def class_ids(
        self, targets: np.ndarray, scores: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """True and predicted class ids, (N,) int64 each."""
        raise NotImplementedError

    def class_report(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> list[ClassReport]:
        t, p = self.class_ids(targets, scores, threshold)
        return ClassCounts.of_ids(t, p, max(len(labels), 2)).reports(labels)

    def confusion(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> np.ndarray | None:
        t, p = self.class_ids(targets, scores, threshold)
        return confusion_counts(t, p, max(len(labels), 2))


class Binary(SingleClass):
    """Two classes; the model's one output is the probability of ``labels[1]``."""

    activation = "sigmoid"
    default_loss = "bce"
    losses = ("bce", "focal")
    primary_metric = "accuracy"
    single_output = True
    starter = Starter(
        "label",
        "two classes, e.g. positive/negative",
        "auto            # binary cross-entropy; or focal",
    )

    def check_classes(self, classes: Sequence[str], found: Sequence[str], where: str) -> None:
        if len(classes) != 2:
            raise DataError(
                f"{where}: a binary task needs exactly 2 classes, found {len(classes)}: "
                f"{', '.join(classes) or '(none)'}"
                + ("; use task: multiclass" if len(classes) > 2 else "")
            )
        super().check_classes(classes, found, where)

    def encode(self, parsed: Sequence[Any], lookup: Lookup, num_classes: int) -> np.ndarray:
        ids = [lookup(str(name), i) for i, name in enumerate(parsed)]
        return np.asarray(ids, dtype=np.float32).reshape(len(parsed))

    def class_ids(
        self, targets: np.ndarray, scores: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        t = (np.asarray(targets).reshape(-1) > 0.5).astype(np.int64)
        p = (np.asarray(scores).reshape(-1) >= threshold).astype(np.int64)
        return t, p

    def metrics(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> dict[str, float]:
        t, p = self.class_ids(targets, scores, threshold)
        return binary_metrics(t, p, np.asarray(scores).reshape(-1))

    def predictions(
        self,
        labels: Sequence[str],
        scores: np.ndarray,
        *,
        threshold: float = 0.5,
        top_k: int | None = None,
    ) -> list[Prediction]:
        p = as_rows(scores)[:, :1].astype(np.float64)
        probs = np.concatenate([1.0 - p, p], axis=1)
        return ranked(labels, probs, (p[:, 0] >= threshold).astype(np.intp), top_k)

    def score_matrix(self, scores: np.ndarray) -> np.ndarray:
        if scores.ndim == 2 and scores.shape[1] == 1:  # P(positive) -> [1 - p, p]
            return np.concatenate([1.0 - scores, scores], axis=1).astype(np.float32)
        return np.asarray(scores, dtype=np.float32)

    def manifest_problems(self, labels: Sequence[str], num_outputs: int) -> list[str]:
        if len(labels) != 2 or num_outputs != 1:
            return ["a binary bundle needs 2 labels and 1 output"]
        return []

    def class_weights(
        self, spec: str | list[float], targets: np.ndarray, num_outputs: int
    ) -> np.ndarray | None:
        """[negative, positive] weights, (2,)."""
        if spec == "none":
            return None
        if isinstance(spec, list):
            if len(spec) != 2:
                raise ConfigError(
                    f"train.loss.class_weights: expected 2 weights for task '{self.name}', "
                    f"got {len(spec)}"
                )
            return np.asarray(spec, dtype=np.float64)
        return balanced_yes_no(targets)[:, 0]


class Multiclass(SingleClass):
    """Two or more classes, exactly one per text: a softmax over them."""

    activation = "softmax"
    default_loss = "cross_entropy"
    losses = ("cross_entropy", "focal")
    primary_metric = "accuracy"
    starter = Starter(
        "label",
        "one class per row, string or integer",
        "auto            # cross-entropy; or {name: cross_entropy, label_smoothing: 0.1}",
    )

    def encode(self, parsed: Sequence[Any], lookup: Lookup, num_classes: int) -> np.ndarray:
        ids = [lookup(str(name), i) for i, name in enumerate(parsed)]
        return np.asarray(ids, dtype=np.int64).reshape(len(parsed))

    def class_ids(
        self, targets: np.ndarray, scores: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(targets).reshape(-1).astype(np.int64)
        s = np.asarray(scores)
        p = (
            np.argmax(s, axis=1).astype(np.int64)
            if s.ndim == 2 and len(s)
            else np.zeros(len(t), dtype=np.int64)
        )
        return t, p

    def metrics(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> dict[str, float]:
        t, p = self.class_ids(targets, scores, threshold)
        return multiclass_metrics(t, p, max(len(labels), 2))

    def placeholder_scores(self, n: int, num_outputs: int) -> np.ndarray:
        return np.full((n, num_outputs), 1.0 / num_outputs, dtype=np.float32)

    def predictions(
        self,
        labels: Sequence[str],
        scores: np.ndarray,
        *,
        threshold: float = 0.5,
        top_k: int | None = None,
    ) -> list[Prediction]:
        probs = as_rows(scores).astype(np.float64)
        return ranked(labels, probs, np.argmax(probs, axis=1), top_k)

    def class_weights(
        self, spec: str | list[float], targets: np.ndarray, num_outputs: int
    ) -> np.ndarray | None:
        """One weight per class, (C,); ``balanced`` = n / (C * count), like scikit-learn."""
        if spec == "none":
            return None
        if isinstance(spec, list):
            if len(spec) != num_outputs:
                raise ConfigError(
                    f"train.loss.class_weights: expected {num_outputs} weights for task "
                    f"'{self.name}', got {len(spec)}"
                )
            return np.asarray(spec, dtype=np.float64)
        n = len(targets)
        counts = np.bincount(targets.astype(np.int64), minlength=num_outputs).astype(np.float64)
        return n / (num_outputs * np.maximum(counts, 1.0))


def balanced_yes_no(targets: np.ndarray) -> np.ndarray:
    """``balanced`` [negative, positive] weights per output, (2, K), of 0/1 targets (N,) or
    (N, K): n / (2 * count), like scikit-learn."""
    n = len(targets)
    y = targets.reshape(n, -1).astype(np.float64)  # (N, 1) binary or (N, C) multilabel
    pos = y.sum(axis=0)
    neg = n - pos
    return np.stack([n / (2.0 * np.maximum(neg, 1.0)), n / (2.0 * np.maximum(pos, 1.0))])
