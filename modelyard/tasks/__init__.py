"""The task registry: each task name maps to the one object that says what the task means.

Stations ask :func:`get_task` and never compare task names. Adding a task is a module with a
:class:`Task` subclass and one :func:`register_task` line here (or in the user's own code,
before the config is loaded); ``docs/architecture.md`` lists what else can change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modelyard.metrics import ClassReport
from modelyard.tasks.base import Prediction, Starter, Task
from modelyard.tasks.classes import Binary, Multiclass
from modelyard.tasks.generation import Generation
from modelyard.tasks.multilabel import Multilabel
from modelyard.tasks.parsing import LabelProblem
from modelyard.tasks.regression import Regression

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry under ``task.name`` (a name is registered once).

    Raises:
        ValueError: the name is taken by another task object.
    """
    known = TASKS.get(task.name)
    if known is not None and known is not task:
        raise ValueError(f"task {task.name!r} is already registered ({known!r})")
    TASKS[task.name] = task
    return task


register_task(Binary("binary"))
register_task(Multiclass("multiclass"))
register_task(Multilabel("multilabel"))
register_task(Regression("regression"))
register_task(Generation("generation"))


def task_names() -> tuple[str, ...]:
    """Every registered task name, in registration order."""
    return tuple(TASKS)


def get_task(task: str | Task) -> Task:
    """The task object for a name (a :class:`Task` is returned as it is).

    Raises:
        ValueError: no task has that name; the message lists the registered ones.
    """
    if isinstance(task, Task):
        return task
    found = TASKS.get(task)
    if found is None:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return found


def primary_metrics() -> tuple[str, ...]:
    """Every task's primary metric, once each, in registration order."""
    return tuple(dict.fromkeys(t.primary_metric for t in TASKS.values()))


def compute_metrics(
    task: str | Task,
    targets: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, float]:
    """The task's metrics for post-activation scores, (N, K) or (N,), against targets.

    Args:
        task: a task or its name.
        targets: as :meth:`LabelSpace.encode` makes them.
        scores: post-activation model outputs, one row per text.
        labels: the class names.
        threshold: the decision threshold of a task that thresholds probabilities.

    Returns:
        Metric name → value as a Python float (NaN only where a metric is undefined, e.g.
        ROC AUC on one class).
    """
    t = get_task(task)
    return t.metrics(targets, t.flat(scores), labels, threshold)


def per_class_report(
    task: str | Task,
    targets: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    threshold: float = 0.5,
) -> list[ClassReport]:
    """Precision, recall, F1 and support per class, in ``labels`` order ([] without classes)."""
    t = get_task(task)
    return t.class_report(targets, t.flat(scores), labels, threshold)


__all__ = [
    "TASKS",
    "LabelProblem",
    "Prediction",
    "Starter",
    "Task",
    "compute_metrics",
    "get_task",
    "per_class_report",
    "primary_metrics",
    "register_task",
    "task_names",
]
