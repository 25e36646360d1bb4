"""``fit``: epochs of optimizer steps, each epoch ending in validation, the best checkpoint and a
checkpoint to resume from.

A step's gradient over ``grad_accum_steps`` micro-batches equals that of one batch holding them
all; mid-epoch checkpoints record how many batches are done, so a resumed epoch skips exactly
those.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from modelyard.errors import RunError
from modelyard.metrics import json_safe
from modelyard.tasks import compute_metrics
from modelyard.training.batches import epoch_batches
from modelyard.training.checkpoint import save_checkpoint, save_weights
from modelyard.training.collate import EncodedSplit, FeatureSplit
from modelyard.training.distributed import accumulating, all_reduce_sum, broadcast, shard
from modelyard.training.optim import current_lr
from modelyard.training.predict import activate_logits, forward_logits, metric_scores
from modelyard.training.state import AfterStep, Loop, Session, StepEnd

log = logging.getLogger("modelyard.training")


def train_step(loop: Loop, group: Sequence[np.ndarray]) -> tuple[float, int]:
    """One optimizer step over ``group`` (``grad_accum_steps`` micro-batches of the train split).

    Each micro-batch's mean loss is weighted by its share of the group's samples, so the
    gradient equals that of one batch holding the whole group. In a data-parallel run each rank
    trains its shard of every batch and the weight is the shard's share times the world size,
    since DDP averages gradients over ranks: the step is still that of the whole group.

    Returns:
        The summed training loss over the group's samples (all ranks), and the sample count.
    """
    parts, data, world = loop.trainer, loop.data, loop.world
    model = parts.model
    net = parts.ddp if parts.ddp is not None else parts.forward or model
    model.train()
    parts.optimizer.zero_grad(set_to_none=True)
    total = sum(len(idx) for idx in group)
    dtype = parts.autocast
    device_type = data.batch.device.type
    loss_sum = 0.0
    for k, indices in enumerate(group):
        idx = shard(indices, world)
        weight = len(idx) / total * world.size
        if len(idx) == 0:  # a last batch smaller than the world: join the all-reduce with 0
            idx, weight = indices[:1], 0.0
        # DDP all-reduces on the group's last backward only; earlier ones accumulate locally
        sync = accumulating(parts.ddp) if k < len(group) - 1 else contextlib.nullcontext()
        batch = data.batch(data.train, idx)
        with sync:
            with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                logits = net(*batch.inputs)
            loss = parts.loss_fn(logits.float(), batch.targets)
            parts.scaler.scale(loss * weight).backward()
        if weight > 0:
            loss_sum += float(loss.detach()) * len(idx)
    (loss_sum,) = all_reduce_sum([loss_sum], world)
    if not math.isfinite(loss_sum):
        raise RunError(
            f"training loss became {loss_sum} at step {loop.progress.global_step + 1}; "
            "lower train.optimizer.lr or set train.grad_clip"
        )
    scaler = parts.scaler
    if parts.grad_clip is not None:
        scaler.unscale_(parts.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), parts.grad_clip)
    # fp16: a step whose gradients overflowed is skipped and the scale lowered (the loss itself
    # is computed in fp32, so the finite check above still holds)
    scaler.step(parts.optimizer)
    scaler.update()
    parts.schedule.after_step()
    return loss_sum, total


def _show_progress(enabled: bool) -> bool:
    return enabled and sys.stderr.isatty()


def train_epoch(loop: Loop, epoch: int, *, max_steps: int | None = None) -> None:
    """Train the rest of ``epoch`` (all of it, unless resuming mid-epoch), running the loop's
    ``after_step`` hooks after every step.

    Args:
        max_steps: stop once ``progress.global_step`` reaches it (a budget; ``None``: no limit).
    """
    cfg = loop.config.train
    p = loop.progress
    batches = epoch_batches(loop, epoch)
    accum = cfg.grad_accum_steps
    bar = tqdm(
        total=len(batches),
        initial=p.step_in_epoch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        leave=False,
        disable=not _show_progress(cfg.progress and loop.world.is_main),
        dynamic_ncols=True,
    )
    try:
        for start in range(p.step_in_epoch, len(batches), accum):
            if max_steps is not None and p.global_step >= max_steps:
                break
            if out_of_time(loop):
                break
            t0 = time.perf_counter()
            group = batches[start : start + accum]
            loss_sum, n = train_step(loop, group)
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
            step = StepEnd(loss_sum, n, last_of_epoch=p.step_in_epoch >= len(batches))
            for hook in loop.hooks.after_step:
                hook(loop, step)
    finally:
        bar.close()


def out_of_time(loop: Loop) -> bool:
    """Whether the loop's deadline (``train.max_time_s``) leaves no room for another step and
    the validation after it: a validation is costed as the epoch's training time per sample
    times the validation split (a forward pass costs less than a step). Rank 0's clock decides
    for every rank, so all stop at the same step."""
    if loop.deadline is None:
        return False
    p = loop.progress
    validation_s = p.elapsed_s / p.seen * len(loop.data.validation) if p.seen else 0.0
    return bool(broadcast(time.monotonic() + validation_s >= loop.deadline, loop.world))


def mid_epoch_checkpoints(session: Session, every: int) -> AfterStep:
    """An ``after_step`` hook: a checkpoint to resume from every ``every`` optimizer steps (the
    epoch's last step is checkpointed by :func:`end_epoch`)."""

    def hook(loop: Loop, step: StepEnd) -> None:
        if loop.progress.global_step % every == 0 and not step.last_of_epoch:
            save_checkpoint(session)

    return hook


def validate(
    session: Session, split: EncodedSplit | FeatureSplit | None = None
) -> dict[str, float]:
    """Loss and task metrics of the current model on a split of the session's data (default: its
    validation split).

    Returns:
        ``{"val_loss": ..., "val_<metric>": ...}``.
    """
    data, parts = session.data, session.trainer
    split = split if split is not None else data.validation
    task = session.config.task
    logits = forward_logits(
        parts.model,
        split,
        data.batch,
        batch_size=session.config.train.batch_size,
        call=parts.forward,
    )
    device = data.batch.device
    targets = torch.from_numpy(split.targets).to(device)
    with torch.no_grad():
        val_loss = float(parts.loss_fn(logits.to(device), targets))
    scores = metric_scores(task, activate_logits(task, logits).numpy())
    metrics = compute_metrics(task, split.targets, scores, list(session.labels.labels))
    return {"val_loss": val_loss, **{f"val_{k}": float(v) for k, v in metrics.items()}}


def end_epoch(session: Session, epoch: int) -> bool:
    """Validate, log, pick the best checkpoint, step epoch schedules, save; True = stop now.

    In a data-parallel run rank 0 validates and broadcasts the record, so every rank takes the
    same schedule, best-checkpoint and early-stopping decisions; rank 0 alone writes.
    """
    cfg = session.config.train
    p = session.progress
    main = session.world.is_main
    record: dict[str, Any] | None = None
    if main:
        record = {
            "epoch": epoch + 1,
            "step": p.global_step,
            "train_loss": p.loss_sum / max(p.seen, 1),
            **(session.validator or validate)(session),
            "lr": current_lr(session.trainer.optimizer),
            "epoch_time_s": round(p.elapsed_s, 4),
            "samples_per_s": round(p.seen / max(p.elapsed_s, 1e-9), 1),
        }
    record = broadcast(record, session.world)
    if record is None:
        raise RunError(f"epoch {epoch + 1}: rank 0 sent no validation record")
    p.history.append(record)
    if main:
        with session.paths.metrics.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(json_safe(record)) + "\n")
    session.trainer.schedule.after_epoch(record)
    improved = session.best.update(float(record[session.best.monitor]), epoch + 1)
    # a NaN monitor (e.g. ROC AUC on one class) never improves; still keep a best checkpoint
    if main and (improved or not session.paths.weights("best").is_file()):
        save_weights(
            session.paths.weights("best"), session.trainer.model, {"epoch": str(epoch + 1)}
        )
    stop = session.early_stopping.step(record) if session.early_stopping is not None else False
    # every hook sees every record, whatever an earlier one asked
    asked = [hook(session, record) for hook in session.hooks.after_epoch]
    stop = stop or any(asked) or out_of_time(session)
    if main:
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
        if out_of_time(session) and p.step_in_epoch == 0:
            log.info("time limit reached before epoch %d", epoch + 1)
            break
        train_epoch(session, epoch)
        if end_epoch(session, epoch):
            es = session.early_stopping
            if out_of_time(session):
                log.info("time limit reached in epoch %d: stopped there", epoch + 1)
            elif es is not None and es.stopped_epoch is not None:
                log.info(
                    "early stop after epoch %d: %s did not improve for %d epochs",
                    epoch + 1,
                    es.tracker.monitor,
                    es.patience,
                )
            break
