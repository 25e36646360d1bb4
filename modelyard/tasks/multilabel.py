"""``multilabel``: any number of labels per text, one sigmoid per label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.metrics import ClassCounts, ClassReport, multilabel_metrics
from modelyard.tasks.base import (
    Lookup,
    Prediction,
    Starter,
    Task,
    as_rows,
    label_set_json,
    ranked,
)
from modelyard.tasks.classes import balanced_yes_no
from modelyard.tasks.parsing import parse_names


class Multilabel(Task):
    """A set of labels per text (maybe empty); each label is its own yes/no decision."""

    activation = "sigmoid"
    default_loss = "bce"
    losses = ("bce", "focal")
    primary_metric = "micro_f1"
    stratify = "labels"
    starter = Starter(
        "labels",
        'a JSON list, or one string with labels separated by "|"',
        "auto            # binary cross-entropy per label",
    )

    def parse_label(self, value: Any, delimiter: str | None) -> Any:
        return parse_names(value, delimiter)

    def names_in(self, parsed: Any) -> list[str]:
        return list(parsed)

    def check_classes(self, classes: Sequence[str], found: Sequence[str], where: str) -> None:
        if not classes:
            raise DataError(f"{where}: no labels found in any row")

    def encode(self, parsed: Sequence[Any], lookup: Lookup, num_classes: int) -> np.ndarray:
        hot = np.zeros((len(parsed), num_classes), dtype=np.float32)  # (N, C) multi-hot
        for i, names in enumerate(parsed):
            for name in names:
                hot[i, lookup(name, i)] = 1.0
        return hot

    def metrics(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> dict[str, float]:
        return multilabel_metrics(np.asarray(targets) > 0.5, np.asarray(scores) >= threshold)

    def class_report(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> list[ClassReport]:
        t, p = np.asarray(targets) > 0.5, np.asarray(scores) >= threshold
        return ClassCounts.of_sets(t, p).reports(labels)

    def predictions(
        self,
        labels: Sequence[str],
        scores: np.ndarray,
        *,
        threshold: float = 0.5,
        top_k: int | None = None,
    ) -> list[Prediction]:
        probs = as_rows(scores).astype(np.float64)
        hits = (probs >= threshold).tolist()
        chosen = [[labels[i] for i, hit in enumerate(row) if hit] for row in hits]
        return ranked(labels, probs, np.argmax(probs, axis=1), top_k, chosen)

    def response_label(self, prediction: Prediction) -> str:
        """The thresholded label set (the v1 ``labels``) as a JSON array (``[]`` for none)."""
        return label_set_json(prediction.labels or [])

    def class_weights(
        self, spec: str | list[float], targets: np.ndarray, num_outputs: int
    ) -> np.ndarray | None:
        """[negative, positive] weights per label, (2, C); a list of C weights up-weights
        each label's positives (negatives keep 1)."""
        if spec == "none":
            return None
        if isinstance(spec, list):
            if len(spec) == num_outputs:
                return np.stack([np.ones(num_outputs), np.asarray(spec, dtype=np.float64)])
            if len(spec) != 2:
                raise ConfigError(
                    f"train.loss.class_weights: expected 2 weights for task '{self.name}', "
                    f"got {len(spec)}"
                )
            w = np.asarray(spec, dtype=np.float64)
            return np.repeat(w[:, None], num_outputs, axis=1)
        return balanced_yes_no(targets)
