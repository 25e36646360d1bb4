"""Task heads: one linear layer from pooled features to raw logits (or the regression value)."""

from __future__ import annotations

from torch import nn

from modelyard.config import TASKS
from modelyard.errors import ConfigError


def head_outputs(task: str, num_outputs: int) -> int:
    """How many values the head emits for ``task``.

    Args:
        task: binary, multiclass, multilabel or regression.
        num_outputs: the label space's output count.

    Returns:
        1 for binary (the positive class logit) and regression; ``num_outputs`` otherwise.

    Raises:
        ConfigError: unknown task, or too few outputs for it.
    """
    if task not in TASKS:
        raise ConfigError(f"task: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if task in ("binary", "regression"):
        return 1
    least = 2 if task == "multiclass" else 1
    if num_outputs < least:
        raise ConfigError(f"task {task!r} needs at least {least} outputs, got {num_outputs}")
    return num_outputs


def make_head(task: str, in_features: int, num_outputs: int) -> nn.Linear:
    """The linear head for ``task`` on ``in_features`` pooled features.

    Args:
        task: binary, multiclass, multilabel or regression.
        in_features: size of the pooled representation.
        num_outputs: the label space's output count.

    Returns:
        ``nn.Linear(in_features, head_outputs(task, num_outputs))``.
    """
    return nn.Linear(in_features, head_outputs(task, num_outputs))
