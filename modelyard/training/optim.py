"""Optimizers and learning-rate schedules, each a registry of names → builders."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from modelyard.config import OptimizerConfig, ScheduleConfig
from modelyard.errors import ConfigError

# parameters, or parameter groups (dicts with their own lr / weight_decay: param_groups.py)
Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]

OPTIMIZERS: dict[str, Callable[[Params, OptimizerConfig], Optimizer]] = {
    "sgd": lambda p, c: torch.optim.SGD(
        p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay
    ),
    # fused: one kernel per step instead of a dozen passes over every parameter, which matters
    # because the dense embedding table makes Adam's update a large share of a small model's step
    "adam": lambda p, c: torch.optim.Adam(
        p, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, fused=True
    ),
    "adamw": lambda p, c: torch.optim.AdamW(
        p, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, fused=True
    ),
    "rmsprop": lambda p, c: torch.optim.RMSprop(
        p, lr=c.lr, momentum=c.momentum, eps=c.eps, weight_decay=c.weight_decay
    ),
    "adagrad": lambda p, c: torch.optim.Adagrad(p, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay),
}


def build_optimizer(params: Params, cfg: OptimizerConfig) -> Optimizer:
    """Build the optimizer named by ``cfg.name`` over ``params``.

    Args:
        params: the model's trainable parameters, or parameter groups.
        cfg: the ``train.optimizer`` section.

    Returns:
        A torch optimizer.
    """
    return OPTIMIZERS[cfg.name](params, cfg)


class Schedule:
    """One interface over per-step and per-epoch schedules.

    The loop calls :meth:`after_step` after every optimizer step and :meth:`after_epoch` after every
    validation; each schedule acts on the one it cares about.
    """

    def __init__(self, scheduler: LambdaLR | ReduceLROnPlateau, monitor: str | None = None):
        self.scheduler = scheduler
        self.monitor = monitor  # set for per-epoch (plateau) schedules

    def after_step(self) -> None:
        if isinstance(self.scheduler, LambdaLR):
            self.scheduler.step()

    def after_epoch(self, record: dict[str, Any]) -> None:
        if isinstance(self.scheduler, ReduceLROnPlateau) and self.monitor is not None:
            self.scheduler.step(float(record[self.monitor]))

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def _warmup(step: int, warmup: int) -> float | None:
    # the first step already gets lr/warmup rather than 0, so no optimizer step is wasted
    return min(1.0, (step + 1) / warmup) if step < warmup else None


def linear_factor(step: int, *, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear warmup to 1, then linear decay to ``floor`` at ``total`` steps."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * (1.0 - progress)


def cosine_factor(step: int, *, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear warmup to 1, then half a cosine down to ``floor`` at ``total``."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _lambda(fn: Callable[..., float], cfg: ScheduleConfig, total: int) -> Callable[[int], float]:
    return lambda step: fn(step, total=total, warmup=cfg.warmup_steps, floor=cfg.min_lr_ratio)


SCHEDULES: dict[str, Callable[[Optimizer, ScheduleConfig, int, str], Schedule]] = {
    "constant": lambda opt, cfg, total, mode: Schedule(LambdaLR(opt, lambda step: 1.0)),
    "linear": lambda opt, cfg, total, mode: Schedule(
        LambdaLR(opt, _lambda(linear_factor, cfg, total))
    ),
    "cosine": lambda opt, cfg, total, mode: Schedule(
        LambdaLR(opt, _lambda(cosine_factor, cfg, total))
    ),
    "plateau": lambda opt, cfg, total, mode: Schedule(
        ReduceLROnPlateau(opt, mode=mode, factor=cfg.factor, patience=cfg.patience),  # type: ignore[arg-type]
        monitor=cfg.monitor,
    ),
}


def build_schedule(
    optimizer: Optimizer, cfg: ScheduleConfig, *, total_steps: int, monitor_mode: str = "min"
) -> Schedule:
    """Build the learning-rate schedule named by ``cfg.name``.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        cfg: the ``train.schedule`` section.
        total_steps: optimizer steps over the whole run (linear / cosine decay length).
        monitor_mode: ``min`` or ``max`` for ``cfg.monitor`` (plateau).

    Returns:
        A :class:`Schedule`.
    """
    if cfg.name in ("linear", "cosine") and cfg.warmup_steps >= total_steps:
        raise ConfigError(
            f"train.schedule.warmup_steps ({cfg.warmup_steps}) must be below the run's "
            f"{total_steps} optimizer steps"
        )
    return SCHEDULES[cfg.name](optimizer, cfg, total_steps, monitor_mode)


def current_lr(optimizer: Optimizer) -> float:
    """The learning rate of the first parameter group."""
    return float(optimizer.param_groups[0]["lr"])
