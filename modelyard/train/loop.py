"""The training loop, in explicit steps: ``setup`` → ``fit`` → ``finish``.

:func:`train` strings them together. Each step is an importable function over one
:class:`Session`, so a notebook (or a test) can run them one at a time.

Reproducibility: the batch order of epoch ``e`` depends only on ``(seed, e)``; the model is built
right after seeding python/numpy/torch; a checkpoint stores every RNG state, the optimizer and
schedule, and how many batches of the current epoch are done, so a resumed run skips exactly those
batches and ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from modelyard import __version__
from modelyard.config import Config, dump_config
from modelyard.errors import ConfigError, RunError
from modelyard.train.callbacks import BestTracker, EarlyStopping, metric_mode, resolve_monitor
from modelyard.train.checkpoint import (
    atomic_path,
    atomic_write_text,
    load_state,
    rng_state,
    save_state,
    save_weights,
    set_rng_state,
)
from modelyard.train.losses import build_loss
from modelyard.train.optim import Schedule, build_optimizer, build_schedule, current_lr
from modelyard.train.predict import activate, forward_logits, metric_scores, to_tensors
from modelyard.train.run import Run, RunPaths

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from modelyard.data import DataSplits, Examples, LabelSpace

log = logging.getLogger("modelyard.train")

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


# ------------------------------------------------------------------------------------ helpers
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for, but torch sees no CUDA device")
    return torch.device(name)


@contextlib.contextmanager
def torch_settings(config: Config) -> Iterator[None]:
    """Thread count and deterministic algorithms for the run; the previous values come back."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def epoch_batches(session: Session, epoch: int) -> list[np.ndarray]:
    """The training batches (index arrays) of ``epoch``: a pure function of ``(seed, epoch)``."""
    cfg = session.config
    rng = np.random.default_rng([cfg.seed % 2**32, epoch])
    return _batches(session.train.lengths, cfg.train.batch_size, cfg.train.bucketing, rng)


def _batches(
    lengths: np.ndarray, batch_size: int, bucketing: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    if bucketing:
        from modelyard.data import bucket_batches

        return bucket_batches(lengths, batch_size, shuffle=True, rng=rng)
    order = rng.permutation(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _encode(tok: Tokenizer, examples: Examples) -> EncodedSplit:
    from modelyard.tokenize import encode

    seqs = encode(tok, examples.texts)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    return EncodedSplit(seqs, lengths, np.asarray(examples.targets), examples.source)


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    # NaN (e.g. ROC AUC with one class present) is not JSON; write null instead
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }


def write_run_json(session: Session, status: str) -> None:
    """Write run.json: what a model needs to be rebuilt, and how the run went."""
    progress = session.progress
    info = {
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
        "seed": session.config.seed,
        "modelyard_version": __version__,
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(session.paths.run_json, json.dumps(_json_safe(info), indent=2) + "\n")


def _vocab_size(tok: Tokenizer) -> int:
    from modelyard.tokenize import tokenizer_info

    return int(tokenizer_info(tok).vocab_size)


# -------------------------------------------------------------------------------------- setup
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
        return
    if paths.dir.exists():
        if overwrite:
            shutil.rmtree(paths.dir)
        elif has_checkpoints:
            raise RunError(
                f"{paths.dir} already holds a trained run; pass --resume to continue it or "
                "--overwrite to start over"
            )
        elif paths.config.is_file() or paths.run_json.is_file() or paths.checkpoints.is_dir():
            shutil.rmtree(paths.dir)  # a run that died before its first checkpoint: nothing to keep
        elif any(paths.dir.iterdir()):
            raise RunError(
                f"{paths.dir} exists and is not a run directory; pick another name or output_dir, "
                "or pass --overwrite"
            )
    paths.checkpoints.mkdir(parents=True, exist_ok=True)


def _load_or_build_tokenizer(
    config: Config, paths: RunPaths, splits: DataSplits, resume: bool
) -> Tokenizer:
    from modelyard.tokenize import build_tokenizer, load_tokenizer

    if resume and paths.tokenizer.is_file():
        return load_tokenizer(paths.tokenizer)
    tok = build_tokenizer(config.tokenizer, config.data.clean, splits.train.texts)
    with atomic_path(paths.tokenizer) as tmp:
        tok.save(str(tmp))
    return tok


def _available_monitors(config: Config, labels: LabelSpace, validation: EncodedSplit) -> list[str]:
    """The record keys a monitor may name, learnt from metrics on placeholder scores."""
    from modelyard.metrics import compute_metrics

    n, k = len(validation), labels.num_outputs
    scores: np.ndarray
    if config.task == "multiclass":
        scores = np.full((n, k), 1.0 / k, dtype=np.float32)
    elif config.task == "multilabel":
        scores = np.full((n, k), 0.5, dtype=np.float32)
    else:
        scores = np.full(n, 0.5, dtype=np.float32)
    names = compute_metrics(config.task, validation.targets, scores, list(labels.labels))
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


def _tensorboard_writer(config: Config, paths: RunPaths) -> Any:
    if not config.train.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(paths.tensorboard))


def setup(config: Config, *, resume: bool = False, overwrite: bool = False) -> Session:
    """Prepare a run: directory, data, tokenizer, encoded splits, model, optimizer, schedule.

    With ``resume`` the model, optimizer, schedule, counters and RNG states come from the last
    checkpoint instead.

    Args:
        config: the resolved config.
        resume: continue the run in ``config.run_dir`` from its last checkpoint.
        overwrite: delete an existing run in ``config.run_dir`` first.

    Returns:
        A :class:`Session` ready for :func:`fit`.

    Raises:
        RunError: the run directory already holds a run (and neither flag was given), or
            there is nothing to resume.
        ConfigError: a setting cannot work (unknown monitor, missing GPU, loss/task mismatch).
    """
    from modelyard.data import load_splits
    from modelyard.models import build_model
    from modelyard.tokenize import tokenizer_info

    paths = RunPaths(config.run_dir)
    tcfg = config.train
    device = resolve_device(tcfg.device)
    _check_tensorboard(config)
    prepare_run_dir(paths, resume=resume, overwrite=overwrite)
    if resume and paths.config.is_file():
        saved = paths.config.read_text(encoding="utf-8")
        if saved != dump_config(config):
            log.warning("resuming %s with a config that differs from its config.yaml", paths.dir)
    atomic_write_text(paths.config, dump_config(config))

    splits = load_splits(config)
    tok = _load_or_build_tokenizer(config, paths, splits, resume)
    info = tokenizer_info(tok)
    train_split = _encode(tok, splits.train)
    validation = _encode(tok, splits.validation)
    if len(validation) == 0:
        raise ConfigError(
            "training needs validation data (for val_loss, the best checkpoint and early "
            "stopping): set data.validation or data.validation_split > 0"
        )

    monitors = _available_monitors(config, splits.labels, validation)
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
    loss_fn = build_loss(tcfg.loss, config.task, train_split.targets, splits.labels.num_outputs).to(
        device
    )
    optimizer = build_optimizer(model.parameters(), tcfg.optimizer)
    n_batches = len(_batches(train_split.lengths, tcfg.batch_size, tcfg.bucketing, _rng0(config)))
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
    )
    if resume:
        restore_checkpoint(session)
    write_run_json(session, "running")
    session.writer = _tensorboard_writer(config, paths)
    log.info(
        "run %s: %d train / %d validation texts, vocab %d, %d parameters, device %s",
        paths.dir,
        len(train_split),
        len(validation),
        info.vocab_size,
        sum(p.numel() for p in model.parameters()),
        device,
    )
    return session


def _rng0(config: Config) -> np.random.Generator:
    return np.random.default_rng([config.seed % 2**32, 0])


# ---------------------------------------------------------------------------------- checkpoint
def save_checkpoint(session: Session) -> None:
    """Write ``last.safetensors`` and ``last.state.pt`` (each atomically)."""
    p = session.progress
    meta = {"epoch": str(p.epoch), "step_in_epoch": str(p.step_in_epoch)}
    save_weights(session.paths.weights("last"), session.model, meta)
    state = {
        "format": STATE_FORMAT,
        "model": {k: v.detach().cpu().clone() for k, v in session.model.state_dict().items()},
        "optimizer": session.optimizer.state_dict(),
        "schedule": session.schedule.state_dict(),
        "rng": rng_state(),
        "progress": asdict(p),
        "best": session.best.state_dict(),
        "early_stopping": (
            session.early_stopping.state_dict() if session.early_stopping is not None else None
        ),
    }
    save_state(session.paths.state, state)


def restore_checkpoint(session: Session) -> None:
    """Load the last checkpoint into a freshly set-up session (the resume path)."""
    state = load_state(session.paths.state)
    if state.get("format") != STATE_FORMAT:
        raise RunError(
            f"{session.paths.state}: unknown training-state format {state.get('format')}"
        )
    try:
        session.model.load_state_dict(state["model"])
        session.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as exc:
        raise RunError(
            f"{session.paths.state}: checkpoint does not fit the configured model: {exc}"
        ) from exc
    session.schedule.load_state_dict(state["schedule"])
    session.best.load_state_dict(state["best"])
    if session.early_stopping is not None and state["early_stopping"] is not None:
        session.early_stopping.load_state_dict(state["early_stopping"])
    known = {f.name for f in fields(Progress)}
    session.progress = Progress(**{k: v for k, v in state["progress"].items() if k in known})
    # the epochs the checkpoint knows are the truth: drop lines a crash left after it
    lines = "".join(json.dumps(_json_safe(r)) + "\n" for r in session.progress.history)
    atomic_write_text(session.paths.metrics, lines)
    set_rng_state(state["rng"])
    p = session.progress
    log.info("resuming %s at epoch %d, batch %d", session.paths.dir, p.epoch + 1, p.step_in_epoch)


# ---------------------------------------------------------------------------------------- fit
def train_step(session: Session, group: Sequence[np.ndarray]) -> tuple[float, int]:
    """One optimizer step over ``group`` (``grad_accum_steps`` micro-batches).

    Each micro-batch's mean loss is weighted by its share of the group's samples, so the
    gradient equals that of one batch holding the whole group.

    Returns:
        The summed training loss over the group's samples, and the sample count.
    """
    cfg = session.config.train
    model, device = session.model, session.device
    model.train()
    session.optimizer.zero_grad(set_to_none=True)
    total = sum(len(idx) for idx in group)
    loss_sum = 0.0
    length = None if cfg.bucketing else session.max_length
    for idx in group:
        ids, mask = to_tensors(
            [session.train.seqs[i] for i in idx],
            pad_id=session.pad_id,
            side=session.padding_side,
            length=length,
            device=device,
        )
        targets = torch.from_numpy(session.train.targets[idx]).to(device)
        loss = session.loss_fn(model(ids, mask), targets)
        (loss * (len(idx) / total)).backward()
        loss_sum += float(loss.detach()) * len(idx)
    if not math.isfinite(loss_sum):
        raise RunError(
            f"training loss became {loss_sum} at step {session.progress.global_step + 1}; "
            "lower train.optimizer.lr or set train.grad_clip"
        )
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    session.optimizer.step()
    session.schedule.after_step()
    return loss_sum, total


def _show_progress(enabled: bool) -> bool:
    return enabled and sys.stderr.isatty()


def train_epoch(session: Session, epoch: int) -> None:
    """Train the rest of ``epoch`` (all of it, unless resuming mid-epoch)."""
    cfg = session.config.train
    p = session.progress
    batches = epoch_batches(session, epoch)
    accum = cfg.grad_accum_steps
    bar = tqdm(
        total=len(batches),
        initial=p.step_in_epoch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        leave=False,
        disable=not _show_progress(cfg.progress),
        dynamic_ncols=True,
    )
    try:
        for start in range(p.step_in_epoch, len(batches), accum):
            t0 = time.perf_counter()
            group = batches[start : start + accum]
            loss_sum, n = train_step(session, group)
            p.elapsed_s += time.perf_counter() - t0
            p.loss_sum += loss_sum
            p.seen += n
            p.step_in_epoch = start + len(group)
            p.global_step += 1
            bar.update(len(group))
            bar.set_postfix(
                step=p.global_step,
                loss=f"{p.loss_sum / p.seen:.4f}",
                samples_s=f"{p.seen / max(p.elapsed_s, 1e-9):.0f}",
            )
            every = cfg.checkpoint_every_steps
            if every and p.global_step % every == 0 and p.step_in_epoch < len(batches):
                save_checkpoint(session)
    finally:
        bar.close()


def validate(session: Session, split: EncodedSplit | None = None) -> dict[str, float]:
    """Loss and task metrics of the current model on a split (default: validation).

    Returns:
        ``{"val_loss": ..., "val_<metric>": ...}``.
    """
    from modelyard.metrics import compute_metrics

    split = split if split is not None else session.validation
    task = session.config.task
    logits = forward_logits(
        session.model,
        split.seqs,
        batch_size=session.config.train.batch_size,
        pad_id=session.pad_id,
        side=session.padding_side,
        length=None if session.config.train.bucketing else session.max_length,
        device=session.device,
    )
    targets = torch.from_numpy(split.targets).to(session.device)
    with torch.no_grad():
        val_loss = float(session.loss_fn(logits.to(session.device), targets))
    scores = metric_scores(task, activate(task, logits).numpy())
    metrics = compute_metrics(task, split.targets, scores, list(session.labels.labels))
    return {"val_loss": val_loss, **{f"val_{k}": float(v) for k, v in metrics.items()}}


def end_epoch(session: Session, epoch: int) -> bool:
    """Validate, log, pick the best checkpoint, step epoch schedules, save; True = stop now."""
    cfg = session.config.train
    p = session.progress
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "step": p.global_step,
        "train_loss": p.loss_sum / max(p.seen, 1),
        **validate(session),
        "lr": current_lr(session.optimizer),
        "epoch_time_s": round(p.elapsed_s, 4),
        "samples_per_s": round(p.seen / max(p.elapsed_s, 1e-9), 1),
    }
    p.history.append(record)
    with session.paths.metrics.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(_json_safe(record)) + "\n")
    session.schedule.after_epoch(record)
    improved = session.best.update(float(record[session.best.monitor]), epoch + 1)
    # a NaN monitor (e.g. ROC AUC on one class) never improves; still keep a best checkpoint
    if improved or not session.paths.weights("best").is_file():
        save_weights(session.paths.weights("best"), session.model, {"epoch": str(epoch + 1)})
    stop = session.early_stopping.step(record) if session.early_stopping is not None else False
    log.info(_epoch_line(record, cfg.epochs, improved))
    if session.writer is not None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                session.writer.add_scalar(key, value, epoch + 1)
        session.writer.flush()
    p.epoch, p.step_in_epoch, p.loss_sum, p.seen, p.elapsed_s = epoch + 1, 0, 0.0, 0, 0.0
    p.stopped_early = stop
    p.finished = stop or p.epoch >= cfg.epochs
    save_checkpoint(session)
    return stop


def _epoch_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    skip = {"epoch", "step", "lr", "epoch_time_s", "samples_per_s"}
    values = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in skip)
    return (
        f"epoch {record['epoch']}/{epochs}  {values}  lr {record['lr']:.2e}  "
        f"{record['epoch_time_s']:.1f}s  {record['samples_per_s']:.0f} samples/s"
        + ("  * best" if improved else "")
    )


def fit(session: Session) -> None:
    """Train from where the session stands to the last epoch (or an early stop)."""
    p = session.progress
    if p.finished:
        log.info("%s: training already finished", session.paths.dir)
        return
    for epoch in range(p.epoch, session.config.train.epochs):
        train_epoch(session, epoch)
        if end_epoch(session, epoch):
            es = session.early_stopping
            if es is not None:
                log.info(
                    "early stop after epoch %d: %s did not improve for %d epochs",
                    epoch + 1,
                    es.tracker.monitor,
                    es.patience,
                )
            break


# ------------------------------------------------------------------------------------- finish
def finish(session: Session) -> Run:
    """Mark the run complete, draw the learning curves, evaluate the best checkpoint on the test
    file when one is configured.

    Returns:
        The :class:`Run`, read back from disk.
    """
    from modelyard.evaluate import evaluate_examples
    from modelyard.report.plots import plot_learning_curves

    paths = session.paths
    write_run_json(session, "completed")
    run = Run.load(paths.dir)
    if session.test is None and run.history:
        # with a test file, evaluate_examples draws the curves beside the test metrics
        plot_learning_curves(
            run.history, paths.eval_dir / "learning_curves.png", title=paths.dir.name
        )
    if session.test is not None:
        result = evaluate_examples(
            run,
            session.test.texts,
            session.test.targets,
            source=session.test.source,
            out_dir=paths.eval_dir,
        )
        log.info("test (%s): %s", session.test.source, _metrics_line(result.metrics))
        run.test_metrics = result.metrics
    return run


def _metrics_line(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def close(session: Session) -> None:
    """Release what the session holds open (the TensorBoard writer)."""
    if session.writer is not None:
        session.writer.close()
        session.writer = None


def train(config: Config, *, resume: bool = False, overwrite: bool = False) -> Run:
    """Train a model as the config says and write the run directory ``config.run_dir``.

    Args:
        config: the resolved config (:func:`modelyard.config.load_config`).
        resume: continue from the run's last checkpoint (pass the run's saved config); ends with
            the same weights as an uninterrupted run.
        overwrite: delete an existing run of the same name first.

    Returns:
        The finished :class:`Run`.

    Raises:
        RunError: the run directory already holds a run and neither flag was given; nothing to
            resume; the loss diverged.
        ConfigError, DataError: from the config and the data files.
    """
    with torch_settings(config):
        session = setup(config, resume=resume, overwrite=overwrite)
        try:
            fit(session)
        except KeyboardInterrupt:
            write_run_json(session, "interrupted")
            raise
        except Exception:
            write_run_json(session, "failed")
            raise
        finally:
            close(session)
        return finish(session)


__all__ = [
    "EncodedSplit",
    "Progress",
    "Session",
    "close",
    "end_epoch",
    "epoch_batches",
    "finish",
    "fit",
    "restore_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "setup",
    "train",
    "train_epoch",
    "train_step",
    "validate",
]
