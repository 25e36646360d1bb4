"""The task: what a model is for, as one object every station asks.

A :class:`Task` owns everything that differs between "a label out of two", "a number" or "a set
of labels": how a raw label is read and checked, how labels become targets, the output count and
activation, the default loss and the losses that fit, the metrics and which one is monitored,
how scores become a :class:`Prediction`, what a bundle's manifest must say, and what
``modelyard init`` writes. The registry (:mod:`modelyard.tasks`) maps names to task objects; no
other module compares task names. Torch-free: the runtime and the server ask it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.metrics import ClassReport

Activation = Literal["sigmoid", "softmax", "identity"]
# how a validation split keeps the data's shape: by class, by quantile bin of the value, or by
# keeping every label of a label set in train
Stratify = Literal["class", "value", "labels"]
Lookup = Callable[[str, int], int]  # (class name, row) -> class index; raises DataError


@dataclass(frozen=True)
class Prediction:
    """One text's prediction.

    Attributes:
        label: the top label; ``None`` for a task without classes (regression).
        score: probability of ``label``; without classes: the predicted value.
        scores: every class's probability (the top-k when the bundle caps it); else {}.
        labels: a label-set task's labels at or over the threshold; otherwise ``None``.
    """

    label: str | None
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    labels: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``labels`` only when the task predicts label sets."""
        out: dict[str, Any] = {"label": self.label, "score": self.score, "scores": self.scores}
        if self.labels is not None:
            out["labels"] = self.labels
        return out


@dataclass(frozen=True)
class Starter:
    """What ``modelyard init`` writes for a task: the label column, its help, the loss line;
    or a whole ``template`` (``str.format`` with ``name``) for a task unlike the classifiers'."""

    label_column: str
    label_help: str
    loss_comment: str
    template: str | None = None


class Task:
    """What one task means. Subclasses set the class attributes and the label/metric methods.

    Args:
        name: the registry name (``task:`` in a config, ``task`` in a manifest).
    """

    activation: Activation = "identity"
    default_loss: str = "mse"
    losses: tuple[str, ...] = ()  # every loss name that fits (``train.loss.name``)
    primary_metric: str = ""
    stratify: Stratify = "class"
    has_classes: bool = True  # predictions carry labels; False: one value per text
    single_output: bool = False  # the model emits one value per text, whatever the classes
    has_confusion: bool = False  # one true and one predicted class per text: a confusion matrix
    min_classes: int = 1
    generative: bool = False  # text in, text out: a causal LM trained on conversations
    starter: Starter = Starter("label", "", "auto")

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ---------------------------------------------------------------------------- labels
    def parse_label(self, value: Any, delimiter: str | None) -> Any:
        """One raw label in its canonical form; raises :class:`LabelProblem`."""
        raise NotImplementedError

    def names_in(self, parsed: Any) -> list[str]:
        """The class names one parsed label holds."""
        return [parsed]

    def check_classes(self, classes: Sequence[str], found: Sequence[str], where: str) -> None:
        """Reject a class list this task cannot train on.

        Args:
            classes: the classes in output order (found or configured).
            found: every class name in the training labels (with repeats).
            where: the file, for the message.

        Raises:
            DataError: too few classes, or too few in the training data.
        """
        if len(classes) < max(self.min_classes, 1):
            raise DataError(
                f"{where}: a {self.name} task needs at least {self.min_classes} classes, found "
                f"{len(classes)}: {', '.join(classes) or '(none)'}"
            )

    def encode(self, parsed: Sequence[Any], lookup: Lookup, num_classes: int) -> np.ndarray:
        """Targets from parsed labels (``lookup`` maps a class name to its index)."""
        raise NotImplementedError

    def num_outputs(self, num_classes: int) -> int:
        """The model's output width for ``num_classes`` classes."""
        return 1 if self.single_output else num_classes

    def head_outputs(self, num_outputs: int) -> int:
        """The head's width, checked: ConfigError when ``num_outputs`` is too few."""
        if self.single_output:
            return 1
        if num_outputs < self.min_classes:
            raise ConfigError(
                f"task {self.name!r} needs at least {self.min_classes} outputs, got {num_outputs}"
            )
        return num_outputs

    # ------------------------------------------------------------------------ model outputs
    def flat(self, scores: np.ndarray) -> np.ndarray:
        """Scores in the layout the metrics read: (N,) for one output per text, else (N, C)."""
        s = np.asarray(scores)
        return s.reshape(len(s)) if self.single_output and s.ndim == 2 else s

    def metrics(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> dict[str, float]:
        """The task's metrics of post-activation ``scores`` (N, K) or (N,) against targets."""
        raise NotImplementedError

    def class_report(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> list[ClassReport]:
        """Precision, recall, F1 and support per class, in ``labels`` order ([] without)."""
        return []

    def confusion(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        threshold: float = 0.5,
    ) -> np.ndarray | None:
        """(C, C) counts of (true, predicted) class; None for a task without one class each."""
        return None

    def placeholder_scores(self, n: int, num_outputs: int) -> np.ndarray:
        """Scores of the right layout for ``n`` texts, to learn the metric names."""
        return np.full(n if self.single_output else (n, num_outputs), 0.5, dtype=np.float32)

    @property
    def monitor(self) -> str:
        """The validation record key that picks the best checkpoint by default."""
        return f"val_{self.primary_metric}"

    @property
    def variant_metric(self) -> str:
        """What an export's variants are scored and chosen by on the validation split."""
        return self.primary_metric

    def predictions(
        self,
        labels: Sequence[str],
        scores: np.ndarray,
        *,
        threshold: float = 0.5,
        top_k: int | None = None,
    ) -> list[Prediction]:
        """One :class:`Prediction` per row of post-activation scores (N, num_outputs)."""
        raise NotImplementedError

    def score_matrix(self, scores: np.ndarray) -> np.ndarray:
        """Scores with one column per label (what a v2 response's ``scores`` holds)."""
        return np.asarray(scores, dtype=np.float32)

    def response_label(self, prediction: Prediction) -> str:
        """One text's v2 ``label`` output element."""
        return str(prediction.label or "")

    # ---------------------------------------------------------------------------- files
    def manifest_problems(self, labels: Sequence[str], num_outputs: int) -> list[str]:
        """What is wrong with a manifest's labels and output count for this task."""
        if self.has_classes and not self.single_output and len(labels) != num_outputs:
            return [f"{len(labels)} labels for {num_outputs} outputs"]
        return []

    def class_weights(
        self, spec: str | list[float], targets: np.ndarray, num_outputs: int
    ) -> np.ndarray | None:
        """Per-class loss weights (``train.loss.class_weights``); None: unweighted."""
        return None

    def check_loss(self, name: str) -> str:
        """The concrete loss for ``train.loss.name`` (``auto`` resolved).

        Raises:
            ConfigError: the loss does not fit this task; names the ones that do.
        """
        resolved = self.default_loss if name == "auto" else name
        if resolved not in self.losses:
            raise ConfigError(
                f"train.loss.name: '{resolved}' does not fit task '{self.name}'; use one of: "
                f"auto, {', '.join(self.losses)}"
            )
        return resolved


def ranked(
    labels: Sequence[str],
    probs: np.ndarray,
    tops: np.ndarray,
    top_k: int | None,
    chosen: Sequence[list[str] | None] | None = None,
) -> list[Prediction]:
    """Predictions of class probabilities (N, C): the top class, and the top-k scores."""
    # Whole-matrix numpy, then plain Python lists: no per-row numpy calls (the server runs this
    # for every batch, holding the GIL the event loop needs).
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k].tolist()
    values = probs.tolist()
    picked = list(chosen) if chosen is not None else [None] * len(values)
    return [
        Prediction(
            label=labels[top],
            score=row[top],
            scores={labels[i]: row[i] for i in best},
            labels=names,
        )
        for top, row, best, names in zip(tops.tolist(), values, order, picked, strict=True)
    ]


def as_rows(scores: np.ndarray) -> np.ndarray:
    """float32 (N, K) from (N, K) or from (N,) (one output per row)."""
    rows = np.asarray(scores, dtype=np.float32)
    return rows[:, None] if rows.ndim == 1 else rows


def label_set_json(names: Sequence[str]) -> str:
    """A label set as a v2 ``label`` element: a JSON array, e.g. ``["music", "plot"]``."""
    return json.dumps(list(names), ensure_ascii=False)
