"""Task heads: one linear layer from pooled features to raw logits (or the regression value)."""

from __future__ import annotations

from torch import nn

from modelyard.errors import ConfigError
from modelyard.tasks import get_task


def head_outputs(task: str, num_outputs: int) -> int:
    """How many values the head emits for ``task``.

    Args:
        task: a registered task name.
        num_outputs: the label space's output count.

    Returns:
        1 for a one-output task (binary, regression); ``num_outputs`` otherwise.

    Raises:
        ConfigError: unknown task, or too few outputs for it.
    """
    try:
        kind = get_task(task)
    except ValueError as exc:
        raise ConfigError(f"task: {exc}") from None
    return kind.head_outputs(num_outputs)


def make_head(task: str, in_features: int, num_outputs: int) -> nn.Linear:
    """The linear head for ``task`` on ``in_features`` pooled features.

    Args:
        task: a registered task name.
        in_features: size of the pooled representation.
        num_outputs: the label space's output count.

    Returns:
        ``nn.Linear(in_features, head_outputs(task, num_outputs))``.
    """
    return nn.Linear(in_features, head_outputs(task, num_outputs))
