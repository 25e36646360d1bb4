"""Loss functions by task: a registry of names → builders.

Every loss takes the model's raw output ``logits`` of shape ``(B, K)`` and the targets exactly as
:meth:`modelyard.data.LabelSpace.encode` produces them (binary float ``(B,)``, multiclass int64
``(B,)``, multilabel float ``(B, C)``, regression float ``(B,)``) and returns a scalar mean. Which
losses fit a task, and its default, are the task's (:attr:`modelyard.tasks.Task.losses`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelyard.config import LossConfig
from modelyard.tasks import Task, get_task


def _flat(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """A one-output task's head: (B, 1) -> (B,)."""
    return logits[:, 0] if task.single_output else logits


class BCELoss(nn.Module):
    """Sigmoid + binary cross-entropy, optionally up-weighting positives (``pos_weight``)."""

    pos_weight: torch.Tensor | None

    def __init__(self, task: str | Task, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.task = get_task(task)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = _flat(logits, self.task)
        pw = self.pos_weight
        if pw is not None and self.task.single_output:
            pw = pw.reshape(())  # one scalar for the (B,) case
        return F.binary_cross_entropy_with_logits(x, targets.to(x.dtype), pos_weight=pw)


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy with optional class weights and label smoothing."""

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, targets.long(), weight=self.weight, label_smoothing=self.label_smoothing
        )


class MSELoss(nn.Module):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = logits[:, 0]
        return F.mse_loss(x, targets.to(x.dtype))


class HuberLoss(nn.Module):
    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = delta

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = logits[:, 0]
        return F.huber_loss(x, targets.to(x.dtype), delta=self.delta)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``-alpha_t * (1 - p_t)^gamma * log(p_t)``, mean over items.

    Sigmoid tasks (binary, multilabel) use the sigmoid form per output; softmax tasks
    (multiclass) the softmax form. ``alpha``
    is optional: per class for multiclass, ``[w_negative, w_positive]`` per output otherwise.
    """

    alpha: torch.Tensor | None

    def __init__(
        self, task: str | Task, gamma: float = 2.0, alpha: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.task = get_task(task)
        self.gamma = gamma
        self.register_buffer("alpha", alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task.activation == "softmax":
            logp = F.log_softmax(logits, dim=-1)  # (B, C)
            t = targets.long()
            logp_t = logp.gather(1, t[:, None])[:, 0]  # (B,)
            loss = -((1.0 - logp_t.exp()) ** self.gamma) * logp_t
            if self.alpha is not None:
                loss = loss * self.alpha[t]
            return loss.mean()
        x = _flat(logits, self.task)
        y = targets.to(x.dtype)
        # log p_t computed from logits for stability: log sigmoid(x) for y=1, log sigmoid(-x) for 0
        logp_t = -F.binary_cross_entropy_with_logits(x, y, reduction="none")
        loss = -((1.0 - logp_t.exp()) ** self.gamma) * logp_t
        if self.alpha is not None:
            loss = loss * (y * self.alpha[1] + (1.0 - y) * self.alpha[0])
        return loss.mean()


class TokenCrossEntropy(nn.Module):
    """A causal LM's loss: the mean cross-entropy of the learnt tokens, each counted once.

    ``logits`` are (N, V) for the N learnt positions of the batch (``ChatBatches``' select),
    ``targets`` (N,) their next tokens.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets.long())


def _pos_weight(w: np.ndarray | None) -> torch.Tensor | None:
    # BCE only re-weights positives relative to negatives: pos_weight = w_pos / w_neg
    if w is None:
        return None
    return torch.as_tensor(w[1] / w[0], dtype=torch.float32).reshape(-1)


def _tensor(w: np.ndarray | None) -> torch.Tensor | None:
    return None if w is None else torch.as_tensor(w, dtype=torch.float32)


LossBuilder = Callable[[LossConfig, Task, "np.ndarray | None"], nn.Module]

LOSSES: dict[str, LossBuilder] = {
    "bce": lambda cfg, task, w: BCELoss(task, _pos_weight(w)),
    "cross_entropy": lambda cfg, task, w: CrossEntropyLoss(_tensor(w), cfg.label_smoothing),
    "mse": lambda cfg, task, w: MSELoss(),
    "huber": lambda cfg, task, w: HuberLoss(cfg.huber_delta),
    "focal": lambda cfg, task, w: FocalLoss(task, cfg.focal_gamma, _tensor(w)),
    "token_cross_entropy": lambda cfg, task, w: TokenCrossEntropy(),
}


def build_loss(
    cfg: LossConfig, task: str | Task, train_targets: np.ndarray, num_outputs: int
) -> nn.Module:
    """Build the loss for a task.

    Args:
        cfg: the ``train.loss`` section.
        task: a task or its name.
        train_targets: encoded training targets (for ``class_weights: balanced``).
        num_outputs: the model's output width.

    Returns:
        A module ``loss(logits (B, K), targets) -> scalar``.
    """
    kind = get_task(task)
    name = kind.check_loss(cfg.name)
    weights = kind.class_weights(cfg.class_weights, train_targets, num_outputs)
    return LOSSES[name](cfg, kind, weights)
