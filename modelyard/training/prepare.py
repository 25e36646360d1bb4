"""``setup``: from a config to a :class:`Session` ready to fit (or resumed from its checkpoint).

The run directory is checked against resume / overwrite, the data read, the tokenizer built (or
read back on resume) and every split encoded once; the model is built right after seeding so its
initial weights depend on the seed alone.
"""

from __future__ import annotations

import logging
import math
import shutil
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import yaml

from modelyard.atomic import atomic_path, atomic_write_text
from modelyard.config import Config, dump_config
from modelyard.data import load_splits
from modelyard.errors import ConfigError, RunError
from modelyard.models import build_model
from modelyard.runs import RunPaths
from modelyard.staging import remove_temp_files
from modelyard.tasks import compute_metrics
from modelyard.tokenize import build_tokenizer, encode, load_tokenizer, tokenizer_info
from modelyard.training.batches import batches_per_epoch
from modelyard.training.callbacks import BestTracker, EarlyStopping, metric_mode, resolve_monitor
from modelyard.training.checkpoint import restore_checkpoint
from modelyard.training.distributed import World, local_rank, on_main, seed_rank, wrap
from modelyard.training.environment import check_precision, resolve_device, seed_everything
from modelyard.training.inference import forward_logits
from modelyard.training.losses import build_loss
from modelyard.training.optim import build_optimizer, build_schedule
from modelyard.training.param_groups import parameter_groups
from modelyard.training.state import EncodedSplit, HeadOnly, Session, write_run_json

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


def _cached_features(session: Session) -> dict[str, torch.Tensor]:
    """``head_only``: the frozen encoder's pooled outputs for the train and validation texts,
    computed once (in eval mode, so without dropout) for every epoch to train the head on."""
    model = session.model
    tcfg = session.config.train
    log.info(
        "head_only: encoding %d texts once", len(session.train.seqs) + len(session.validation.seqs)
    )
    features = {}
    for name, split in (("train", session.train), ("validation", session.validation)):
        features[name] = forward_logits(
            model,
            split.seqs,
            batch_size=tcfg.batch_size,
            pad_id=session.pad_id,
            side=session.padding_side,
            length=None if tcfg.bucketing else session.max_length,
            device=session.device,
            call=cast(HeadOnly, model).features,
        )
    return features


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
    tcfg = config.train
    world = world if world is not None else World()
    if getattr(config.model, "head_only", False) and world.size > 1:
        raise ConfigError("model.head_only trains the head in one process: drop --nproc")
    device = resolve_device(tcfg.device, local_rank(world))
    check_precision(tcfg.precision, device)
    _check_tensorboard(config)
    # everything that can fail on the config or the data fails here, before the run directory
    # is touched: --overwrite never deletes a run for a config that cannot train
    splits = load_splits(config)
    if len(splits.validation.texts) == 0:
        raise ConfigError(
            "training needs validation data (for val_loss, the best checkpoint and early "
            "stopping): set data.validation or data.validation_split > 0"
        )
    monitors = _available_monitors(config, splits.labels, np.asarray(splits.validation.targets))
    monitor = resolve_monitor(tcfg.monitor, monitors, "train.monitor")
    best = BestTracker(monitor, metric_mode(monitor))
    early = None
    if tcfg.early_stopping is not None:
        es = tcfg.early_stopping
        es_monitor = resolve_monitor(es.monitor, monitors, "train.early_stopping.monitor")
        mode = metric_mode(es_monitor) if es.mode == "auto" else es.mode
        early = EarlyStopping(BestTracker(es_monitor, mode, es.min_delta), es.patience)
    schedule_cfg = tcfg.schedule
    if schedule_cfg.name == "plateau":
        plateau_monitor = resolve_monitor(schedule_cfg.monitor, monitors, "train.schedule.monitor")
        schedule_cfg = schedule_cfg.model_copy(update={"monitor": plateau_monitor})

    on_main(world, lambda: prepare_run_dir(paths, resume=resume, overwrite=overwrite))
    if resume and world.is_main and paths.config.is_file():
        saved = yaml.safe_load(paths.config.read_text(encoding="utf-8")) or {}
        now = yaml.safe_load(dump_config(config))
        # where the run directory lives may change (a moved run); what it trains may not
        if {**saved, "output_dir": None} != {**now, "output_dir": None}:
            log.warning("resuming %s with a config that differs from its config.yaml", paths.dir)
    if world.is_main:
        atomic_write_text(paths.config, dump_config(config))
    tok = _load_or_build_tokenizer(config, paths, splits, resume, world)
    info = tokenizer_info(tok)
    train_split = encode_split(tok, splits.train)
    validation = encode_split(tok, splits.validation)

    # the model is built right after seeding so its initial weights depend on the seed alone
    seed_everything(config.seed)
    max_length = int(config.tokenizer.max_length)
    model = build_model(
        config.model,
        task=config.task,
        vocab_size=int(info.vocab_size),
        num_outputs=splits.labels.num_outputs,
        max_length=max_length,
        pad_id=int(info.pad_id),
    ).to(device)
    seed_rank(world, config.seed)
    loss_fn = build_loss(tcfg.loss, config.task, train_split.targets, splits.labels.num_outputs).to(
        device
    )
    optimizer = build_optimizer(parameter_groups(model, tcfg.optimizer), tcfg.optimizer)
    n_batches = batches_per_epoch(config, train_split.lengths)
    steps_per_epoch = math.ceil(n_batches / tcfg.grad_accum_steps)
    schedule = build_schedule(
        optimizer,
        schedule_cfg,
        total_steps=steps_per_epoch * tcfg.epochs,
        monitor_mode=metric_mode(schedule_cfg.monitor),
    )
    session = Session(
        config=config,
        paths=paths,
        labels=splits.labels,
        tokenizer=tok,
        pad_id=int(info.pad_id),
        padding_side=str(info.padding_side),
        max_length=max_length,
        train=train_split,
        validation=validation,
        test=splits.test,
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        schedule=schedule,
        device=device,
        best=best,
        early_stopping=early,
        world=world,
        # dynamic loss scaling for fp16; disabled, its calls pass straight through
        scaler=torch.amp.GradScaler(device.type, enabled=tcfg.precision == "fp16"),
    )
    if resume:
        restore_checkpoint(session)
    if getattr(model, "head_only", False):
        session.features = _cached_features(session)
    session.ddp = wrap(model, world, device)
    write_run_json(session, "running")
    session.writer = _tensorboard_writer(config, paths, world)
    log.info(
        "run %s: %d train / %d validation texts, vocab %d, %d parameters, device %s, %d rank(s)",
        paths.dir,
        len(train_split),
        len(validation),
        info.vocab_size,
        sum(p.numel() for p in model.parameters()),
        device,
        world.size,
    )
    return session


def encode_split(tok: Tokenizer, examples: Examples) -> EncodedSplit:
    seqs = encode(tok, examples.texts)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    return EncodedSplit(seqs, lengths, np.asarray(examples.targets), examples.source)
