"""``regression``: one number per text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.metrics import regression_metrics
from modelyard.tasks.base import Lookup, Prediction, Starter, Task, as_rows
from modelyard.tasks.parsing import parse_number


class Regression(Task):
    """A finite number per text; the model's one output is the value itself."""

    activation = "identity"
    default_loss = "mse"
    losses = ("mse", "huber")
    primary_metric = "rmse"
    stratify = "value"
    has_classes = False
    single_output = True
    min_classes = 0
    starter = Starter("score", "a number", "auto            # mse; or huber")

    def parse_label(self, value: Any, delimiter: str | None) -> Any:
        return parse_number(value)

    def names_in(self, parsed: Any) -> list[str]:
        return []

    def check_classes(self, classes: Sequence[str], found: Sequence[str], where: str) -> None:
        return None

    def encode(self, parsed: Sequence[Any], lookup: Lookup, num_classes: int) -> np.ndarray:
        return np.asarray(parsed, dtype=np.float32).reshape(len(parsed))

    def metrics(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> dict[str, float]:
        return regression_metrics(targets, scores)

    def predictions(
        self,
        labels: Sequence[str],
        scores: np.ndarray,
        *,
        threshold: float = 0.5,
        top_k: int | None = None,
    ) -> list[Prediction]:
        values = as_rows(scores)[:, 0].astype(np.float64).tolist()
        return [Prediction(label=None, score=v) for v in values]
