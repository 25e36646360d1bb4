"""``setup``: from a config to a :class:`Session` ready to fit (or resumed from its checkpoint).

The run directory is checked against resume / overwrite, the data read, the tokenizer built (or
read back on resume) and every split encoded once; the model is built right after seeding so its
initial weights depend on the seed alone.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from torch import nn

from modelyard.atomic import atomic_path, atomic_write_text
from modelyard.config import Config, ScheduleConfig, dump_config
from modelyard.data import load_splits
from modelyard.errors import ConfigError, RunError
from modelyard.models import build_model, capabilities
from modelyard.runs import RunPaths
from modelyard.staging import remove_temp_files
from modelyard.tasks import compute_metrics
from modelyard.tokenize import build_tokenizer, encode, load_tokenizer, tokenizer_info
from modelyard.training.batches import batches_per_epoch
from modelyard.training.callbacks import BestTracker, EarlyStopping, metric_mode, resolve_monitor
from modelyard.training.checkpoint import restore_checkpoint
from modelyard.training.collate import ChatSplit, Data, EncodedSplit, TokenBatches, encoded_split
from modelyard.training.distributed import World, local_rank, on_main, seed_rank, wrap
from modelyard.training.environment import (
    autocast_dtype,
    check_precision,
    resolve_device,
    seed_everything,
)
from modelyard.training.epochs import mid_epoch_checkpoints
from modelyard.training.head_only import on_features
from modelyard.training.losses import build_loss
from modelyard.training.optim import build_optimizer, build_schedule
from modelyard.training.param_groups import parameter_groups
from modelyard.training.state import Session, Trainer, model_info, write_run_json

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from modelyard.data import DataSplits, Examples, LabelSpace

log = logging.getLogger("modelyard.training")


def prepare_run_dir(paths: RunPaths, *, resume: bool, overwrite: bool) -> None:
    """Check what is already in the run directory against resume / overwrite.

    Raises:
        RunError: the directory holds a run and neither flag was given, or resume finds no
            checkpoint.
    """
    if resume and overwrite:
        raise RunError("pass either resume or overwrite, not both")
    has_checkpoints = paths.checkpoints.is_dir() and any(paths.checkpoints.iterdir())
    if resume:
        if not paths.state.is_file():
            raise RunError(
                f"{paths.dir}: no checkpoint to resume from ({paths.state} is missing); "
                "start it again without --resume"
            )
        # a run killed mid-write (kill -9) left its half-written temporary files; the renamed
        # files beside them are whole, and this process is the run's one writer now
        for directory in (paths.dir, paths.checkpoints):
            for path in remove_temp_files(directory):
                log.info("removed %s, left by an interrupted write", path)
        return
    if paths.dir.exists() and any(paths.dir.iterdir()):
        if not looks_like_a_run(paths):
            # never delete what modelyard did not write, --overwrite or not
            raise RunError(
                f"{paths.dir} exists and is not a modelyard run directory (no run.json); "
                "pick another name or output_dir"
            )
        if has_checkpoints and not overwrite:
            raise RunError(
                f"{paths.dir} already holds a trained run; pass --resume to continue it or "
                "--overwrite to start over"
            )
        # --overwrite, or a run that died before its first checkpoint: nothing to keep
        shutil.rmtree(paths.dir)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)


# what a run directory holds before its first epoch ends (a crash there leaves only these)
_EARLY_RUN_FILES = {"config.yaml", "tokenizer.json", "run.json", "metrics.jsonl", "checkpoints"}


def looks_like_a_run(paths: RunPaths) -> bool:
    """A directory modelyard wrote: it has run.json, or only what a run writes first."""
    if paths.run_json.is_file():
        return True
    names = {p.name for p in paths.dir.iterdir()}
    return names <= _EARLY_RUN_FILES and paths.config.is_file()


def _load_or_build_tokenizer(
    config: Config, paths: RunPaths, splits: DataSplits, resume: bool, world: World
) -> Tokenizer:
    if resume and paths.tokenizer.is_file():
        return load_tokenizer(paths.tokenizer)
    # every rank builds the same tokenizer from the same texts; rank 0 saves it
    tok = build_tokenizer(config.tokenizer, config.data.clean, splits.train.texts)
    if world.is_main:
        with atomic_path(paths.tokenizer) as tmp:
            tok.save(str(tmp))
    return tok


def _available_monitors(config: Config, labels: LabelSpace, targets: np.ndarray) -> list[str]:
    """The record keys a monitor may name, learnt from metrics on placeholder scores."""
    scores = labels.kind.placeholder_scores(len(targets), labels.num_outputs)
    names = compute_metrics(config.task, targets, scores, list(labels.labels))
    return ["val_loss", *(f"val_{name}" for name in names)]


def _check_tensorboard(config: Config) -> None:
    if not config.train.tensorboard:
        return
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "train.tensorboard is on, but the tensorboard package is not installed; "
            "install it with `pip install tensorboard` or set train.tensorboard=false"
        ) from exc


def _tensorboard_writer(config: Config, paths: RunPaths, world: World) -> Any:
    if not config.train.tensorboard or not world.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(paths.tensorboard))


def setup(
    config: Config, *, resume: bool = False, overwrite: bool = False, world: World | None = None
) -> Session:
    """Prepare a run: directory, data, tokenizer, encoded splits, model, optimizer, schedule.

    With ``resume`` the model, optimizer, schedule, counters and RNG states come from the last
    checkpoint instead.

    Args:
        config: the resolved config.
        resume: continue the run in ``config.run_dir`` from its last checkpoint.
        overwrite: delete an existing run in ``config.run_dir`` first.
        world: this process among data-parallel ranks (default: one process); the process
            group must be up (:func:`.distributed.process_group`). Rank 0 alone writes.

    Returns:
        A :class:`Session` ready for :func:`fit`.

    Raises:
        RunError: the run directory already holds a run (and neither flag was given), or
            there is nothing to resume.
        ConfigError: a setting cannot work (unknown monitor, missing GPU, loss/task mismatch).
    """
    paths = RunPaths(config.run_dir)
    world = world if world is not None else World()
    caps = capabilities(config.model)
    if caps.head_only and world.size > 1:
        raise ConfigError("model.head_only trains the head in one process: drop --nproc")
    device = check_settings(config, world)
    # everything that can fail on the config or the data fails here, before the run directory
    # is touched: --overwrite never deletes a run for a config that cannot train
    splits = load_splits(config)
    if len(splits.validation.texts) == 0:
        raise ConfigError(
            "training needs validation data (for val_loss, the best checkpoint and early "
            "stopping): set data.validation or data.validation_split > 0"
        )
    monitors = _available_monitors(config, splits.labels, np.asarray(splits.validation.targets))
    watch = Monitoring.resolve(config, monitors)
    open_run_dir(config, paths, world, resume=resume, overwrite=overwrite)
    tok = _load_or_build_tokenizer(config, paths, splits, resume, world)
    info = tokenizer_info(tok)
    data = Data(
        train=encode_split(tok, splits.train),
        validation=encode_split(tok, splits.validation),
        batch=token_batches(config, tok, device),
        test=splits.test,
    )

    # the model is built right after seeding so its initial weights depend on the seed alone
    seed_everything(config.seed)
    model = build_model(
        config.model,
        task=config.task,
        vocab_size=int(info.vocab_size),
        num_outputs=splits.labels.num_outputs,
        max_length=int(config.tokenizer.max_length),
        pad_id=int(info.pad_id),
    ).to(device)
    seed_rank(world, config.seed)
    trainer = build_trainer(
        config, model, data.train, splits.labels.num_outputs, device, schedule=watch.schedule
    )
    session = Session(
        config=config,
        paths=paths,
        labels=splits.labels,
        tokenizer=tok,
        model_info=model_info(config, splits.labels, tok),
        data=data,
        trainer=trainer,
        best=watch.best,
        early_stopping=watch.early_stopping,
        world=world,
    )
    if resume:
        restore_checkpoint(session)
    if caps.head_only:
        session.data, session.trainer = on_features(data, trainer, config.train.batch_size)
    start(session)
    return session


def check_settings(config: Config, world: World) -> torch.device:
    """The device to train on, once the precision and TensorBoard settings are checked."""
    device = resolve_device(config.train.device, local_rank(world))
    check_precision(config.train.precision, device)
    _check_tensorboard(config)
    return device


@dataclass(frozen=True)
class Monitoring:
    """What watches validation: the best checkpoint's tracker, early stopping, and the schedule
    section with its monitor resolved."""

    best: BestTracker
    early_stopping: EarlyStopping | None
    schedule: ScheduleConfig

    @classmethod
    def resolve(cls, config: Config, monitors: list[str]) -> Monitoring:
        """Check every monitor the config names against the record keys ``monitors``.

        Raises:
            ConfigError: a monitor names no key of the validation record.
        """
        tcfg = config.train
        monitor = resolve_monitor(tcfg.monitor, monitors, "train.monitor")
        early = None
        if tcfg.early_stopping is not None:
            es = tcfg.early_stopping
            es_monitor = resolve_monitor(
                es.monitor or tcfg.monitor, monitors, "train.early_stopping.monitor"
            )
            mode = metric_mode(es_monitor) if es.mode == "auto" else es.mode
            early = EarlyStopping(BestTracker(es_monitor, mode, es.min_delta), es.patience)
        schedule = tcfg.schedule
        if schedule.name == "plateau":
            plateau = resolve_monitor(schedule.monitor, monitors, "train.schedule.monitor")
            schedule = schedule.model_copy(update={"monitor": plateau})
        return cls(BestTracker(monitor, metric_mode(monitor)), early, schedule)


def open_run_dir(
    config: Config, paths: RunPaths, world: World, *, resume: bool, overwrite: bool
) -> None:
    """Check the run directory against resume / overwrite (rank 0) and write config.yaml."""
    on_main(world, lambda: prepare_run_dir(paths, resume=resume, overwrite=overwrite))
    if resume and world.is_main and paths.config.is_file():
        saved = yaml.safe_load(paths.config.read_text(encoding="utf-8")) or {}
        now = yaml.safe_load(dump_config(config))
        # where the run directory lives may change (a moved run); what it trains may not
        if {**saved, "output_dir": None} != {**now, "output_dir": None}:
            log.warning("resuming %s with a config that differs from its config.yaml", paths.dir)
    if world.is_main:
        atomic_write_text(paths.config, dump_config(config))


def start(session: Session) -> None:
    """The last of setup: the DDP wrapper, the step hooks, run.json and the TensorBoard
    writer."""
    config, model, world = session.config, session.trainer.model, session.world
    device = session.data.batch.device
    session.trainer.ddp = wrap(model, world, device)
    every = config.train.checkpoint_every_steps
    if every:
        session.hooks.after_step.append(mid_epoch_checkpoints(session, every))
    write_run_json(session, "running")
    session.writer = _tensorboard_writer(config, session.paths, world)
    log.info(
        "run %s: %d train / %d validation examples, vocab %s, %d parameters (%d trained), "
        "device %s, %d rank(s)",
        session.paths.dir,
        len(session.data.train),
        len(session.data.validation),
        session.model_info.get("vocab_size"),
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        device,
        world.size,
    )


def token_batches(config: Config, tok: Tokenizer, device: torch.device) -> TokenBatches:
    """The run's batch function: token ids padded as the tokenizer says, to each batch's longest
    text (length buckets) or to ``tokenizer.max_length`` (``train.bucketing`` off)."""
    info = tokenizer_info(tok)
    return TokenBatches(
        pad_id=int(info.pad_id),
        side=str(info.padding_side),
        length=None if config.train.bucketing else int(config.tokenizer.max_length),
        device=device,
    )


def build_trainer(
    config: Config,
    model: nn.Module,
    train: EncodedSplit | ChatSplit,
    num_outputs: int,
    device: torch.device,
    *,
    schedule: ScheduleConfig | None = None,
) -> Trainer:
    """The optimisation parts for ``model`` as ``config.train`` says: the loss (fitted to the
    train targets), optimizer, the schedule over ``train.epochs`` of ``train``'s batches,
    precision and clipping.

    Args:
        schedule: the schedule section with its monitor resolved (default ``train.schedule``).
    """
    tcfg = config.train
    schedule_cfg = schedule if schedule is not None else tcfg.schedule
    loss_fn = build_loss(tcfg.loss, config.task, train.targets, num_outputs).to(device)
    optimizer = build_optimizer(parameter_groups(model, tcfg.optimizer), tcfg.optimizer)
    n_batches = batches_per_epoch(config, train.lengths)
    steps_per_epoch = math.ceil(n_batches / tcfg.grad_accum_steps)
    return Trainer(
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        schedule=build_schedule(
            optimizer,
            schedule_cfg,
            total_steps=steps_per_epoch * tcfg.epochs,
            monitor_mode=metric_mode(schedule_cfg.monitor),
        ),
        grad_clip=tcfg.grad_clip,
        autocast=autocast_dtype(tcfg.precision),
        # dynamic loss scaling for fp16; disabled, its calls pass straight through
        scaler=torch.amp.GradScaler(device.type, enabled=tcfg.precision == "fp16"),
    )


def encode_split(tok: Tokenizer, examples: Examples) -> EncodedSplit:
    """Encode a split's texts once (token ids, their lengths) beside its targets."""
    return encoded_split(encode(tok, examples.texts), np.asarray(examples.targets), examples.source)
