"""What one training run holds while it runs: the :class:`Session` and its saved counters.

Everything here is plain data (plus ``run.json``, the run's summary on disk); the steps that act
on a session live in :mod:`.setup`, :mod:`.fit`, :mod:`.checkpoint` and :mod:`.recipe`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from modelyard import __version__
from modelyard.atomic import atomic_write_text
from modelyard.config import Config
from modelyard.metrics import json_safe
from modelyard.runs import RunPaths
from modelyard.training.callbacks import BestTracker, EarlyStopping
from modelyard.training.distributed import World
from modelyard.training.optim import Schedule

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from modelyard.data import Examples, LabelSpace

STATE_FORMAT = 1


@dataclass
class EncodedSplit:
    """A split's texts, encoded once: token ids, their lengths and the encoded targets."""

    seqs: list[list[int]]
    lengths: np.ndarray
    targets: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass
class Progress:
    """Where training stands; all plain values, saved in every checkpoint."""

    epoch: int = 0  # epochs completed == the 0-based index of the epoch in progress
    step_in_epoch: int = 0  # batches of the epoch in progress already trained
    global_step: int = 0  # optimizer steps so far
    loss_sum: float = 0.0  # training loss summed over the samples of the epoch in progress
    seen: int = 0  # samples of the epoch in progress
    elapsed_s: float = 0.0  # training time of the epoch in progress
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    stopped_early: bool = False


class HeadOnly(Protocol):
    """A model that trains its head alone on cached features (``model.head_only``)."""

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...
    def classify(self, features: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Session:
    """Everything one training run holds while it runs."""

    config: Config
    paths: RunPaths
    labels: LabelSpace
    tokenizer: Tokenizer
    pad_id: int
    padding_side: str
    max_length: int
    train: EncodedSplit
    validation: EncodedSplit
    test: Examples | None
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    device: torch.device
    best: BestTracker
    early_stopping: EarlyStopping | None
    progress: Progress = field(default_factory=Progress)
    writer: Any = None  # torch.utils.tensorboard.SummaryWriter when train.tensorboard
    world: World = field(default_factory=World)  # this process among the data-parallel ranks
    ddp: nn.Module | None = None  # the DDP wrapper of ``model`` that trains, when distributed
    digests: list[str] = field(default_factory=list)  # each rank's final weights (rank 0)
    # head_only: the frozen encoder's pooled outputs, "train" and "validation", in split order
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    # fp16's loss scaler; for fp32 and bf16 a disabled one, whose calls pass through
    scaler: torch.amp.GradScaler = field(
        default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False)
    )


def write_run_json(session: Session, status: str) -> None:
    """Write run.json: what a model needs to be rebuilt, and how the run went (rank 0 only)."""
    if not session.world.is_main:
        return
    progress = session.progress
    info: dict[str, object] = {
        "name": session.config.name,
        "task": session.config.task,
        "labels": list(session.labels.labels),
        "label_space": session.labels.to_dict(),
        "vocab_size": _vocab_size(session.tokenizer),
        "num_outputs": session.labels.num_outputs,
        "max_length": session.max_length,
        "pad_id": session.pad_id,
        "padding_side": session.padding_side,
        "status": status,
        "monitor": session.best.monitor,
        "best_epoch": session.best.best_epoch or None,
        "best_score": session.best.best,
        "epochs_completed": progress.epoch,
        "global_step": progress.global_step,
        "stopped_early": progress.stopped_early,
        "num_train": len(session.train),
        "num_validation": len(session.validation),
        "device": str(session.device),
        "world_size": session.world.size,
        **({"rank_weights_sha256": session.digests} if session.digests else {}),
        "seed": session.config.seed,
        "modelyard_version": __version__,
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(session.paths.run_json, json.dumps(json_safe(info), indent=2) + "\n")


def _vocab_size(tok: Tokenizer) -> int:
    from modelyard.tokenize import tokenizer_info

    return int(tokenizer_info(tok).vocab_size)
