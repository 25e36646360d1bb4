"""What the training loop steps and what one training run holds while it runs.

:class:`Loop` is what the one loop (:func:`.epochs.train_epoch`) needs: settings, the data and
its batch function, the optimisation parts (:class:`Trainer`), where training stands and the step
hooks. A run's :class:`Session` is a loop plus what the run writes and decides. Everything here
is plain data (plus ``run.json``, the run's summary on disk); the steps that act on a session live
in :mod:`.prepare` (setup), :mod:`.epochs` (step, epoch, validate, fit), :mod:`.checkpoint` and
:mod:`.recipe`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modelyard import __version__
from modelyard.atomic import atomic_write_text
from modelyard.config import Config
from modelyard.metrics import json_safe
from modelyard.runs import RunPaths
from modelyard.tokenize import tokenizer_info
from modelyard.training.callbacks import BestTracker, EarlyStopping
from modelyard.training.collate import Data
from modelyard.training.distributed import World
from modelyard.training.optim import Schedule

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from modelyard.data import LabelSpace

STATE_FORMAT = 1


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


@dataclass
class Trainer:
    """The optimisation parts: the model, how a batch goes through it, loss and optimizer step.

    Attributes:
        model: the model trained (and saved).
        forward: what a batch's inputs go through; ``None``: the model itself (its DDP wrapper
            when training data-parallel). ``head_only``: the model's head.
        autocast: ``train.precision``'s autocast dtype; ``None`` runs in fp32.
        scaler: fp16's loss scaler; for fp32 and bf16 a disabled one, whose calls pass through.
        ddp: the DDP wrapper of ``model`` that trains, when distributed.
    """

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    grad_clip: float | None = None
    autocast: torch.dtype | None = None
    scaler: torch.amp.GradScaler = field(
        default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False)
    )
    forward: Callable[..., torch.Tensor] | None = None
    ddp: nn.Module | None = None


@dataclass(frozen=True)
class StepEnd:
    """What an optimizer step did, for the hooks run after it."""

    loss_sum: float  # the training loss summed over the step's samples (all ranks)
    samples: int
    last_of_epoch: bool


# after_step(loop, step): run after every optimizer step, in order
AfterStep = Callable[["Loop", StepEnd], None]
# after_epoch(session, record): run after each epoch's validation record; True stops training
# there (e.g. ``modelyard tune`` pruning a trial whose validation curve lags)
AfterEpoch = Callable[["Session", dict[str, Any]], bool]


@dataclass
class Hooks:
    """Callbacks the loop runs: ``after_step`` after every optimizer step (e.g. the mid-epoch
    checkpoint, or re-applying pruning masks), ``after_epoch`` after each epoch's validation."""

    after_step: list[AfterStep] = field(default_factory=list)
    after_epoch: list[AfterEpoch] = field(default_factory=list)


@dataclass(kw_only=True)
class Loop:
    """What the training loop steps: settings, data, the optimisation parts, where it stands."""

    config: Config
    data: Data[Any]
    trainer: Trainer
    world: World = field(default_factory=World)  # this process among the data-parallel ranks
    progress: Progress = field(default_factory=Progress)
    hooks: Hooks = field(default_factory=Hooks)
    # ``time.monotonic()`` past which no step starts (``train.max_time_s``); None: no limit
    deadline: float | None = None


@dataclass(kw_only=True)
class Session(Loop):
    """One training run while it runs: its loop, plus what the run writes and decides."""

    paths: RunPaths
    labels: LabelSpace  # no classes for a generative task
    tokenizer: Tokenizer | Any  # a Hugging Face tokenizer for a causal LM
    model_info: dict[str, Any]  # what run.json says to rebuild the model (see model_info)
    best: BestTracker
    early_stopping: EarlyStopping | None
    writer: Any = None  # torch.utils.tensorboard.SummaryWriter when train.tensorboard
    digests: list[str] = field(default_factory=list)  # each rank's final weights (rank 0)
    # the validation record of the current model; None: ``epochs.validate`` (loss and metrics
    # on scores), a causal LM's is its per-token loss and perplexity
    validator: Callable[[Session], dict[str, float]] | None = None


def model_info(config: Config, labels: LabelSpace, tokenizer: Tokenizer) -> dict[str, Any]:
    """What run.json holds to rebuild a model that scores texts: labels, vocabulary, lengths."""
    tok = tokenizer_info(tokenizer)
    return {
        "labels": list(labels.labels),
        "label_space": labels.to_dict(),
        "vocab_size": int(tok.vocab_size),
        "num_outputs": labels.num_outputs,
        "max_length": int(config.tokenizer.max_length),
        "pad_id": int(tok.pad_id),
        "padding_side": str(tok.padding_side),
    }


def write_run_json(session: Session, status: str) -> None:
    """Write run.json: what a model needs to be rebuilt, and how the run went (rank 0 only)."""
    if not session.world.is_main:
        return
    progress = session.progress
    info: dict[str, object] = {
        "name": session.config.name,
        "task": session.config.task,
        **session.model_info,
        "status": status,
        "monitor": session.best.monitor,
        "best_epoch": session.best.best_epoch or None,
        "best_score": session.best.best,
        "epochs_completed": progress.epoch,
        "global_step": progress.global_step,
        "stopped_early": progress.stopped_early,
        "num_train": len(session.data.train),
        "num_validation": len(session.data.validation),
        "device": str(session.data.batch.device),
        "world_size": session.world.size,
        **({"rank_weights_sha256": session.digests} if session.digests else {}),
        "seed": session.config.seed,
        "modelyard_version": __version__,
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(session.paths.run_json, json.dumps(json_safe(info), indent=2) + "\n")
