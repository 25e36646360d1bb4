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
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from modelyard.errors import RunError
from modelyard.metrics import json_safe
from modelyard.tasks import compute_metrics
from modelyard.training.batches import epoch_batches
from modelyard.training.checkpoint import save_checkpoint, save_weights
from modelyard.training.distributed import accumulating, all_reduce_sum, broadcast, shard
from modelyard.training.inference import activate_logits, forward_logits, metric_scores, to_tensors
from modelyard.training.optim import current_lr
from modelyard.training.state import EncodedSplit, HeadOnly, Session

log = logging.getLogger("modelyard.training")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision -> autocast dtype


def train_step(session: Session, group: Sequence[np.ndarray]) -> tuple[float, int]:
    """One optimizer step over ``group`` (``grad_accum_steps`` micro-batches).

    Each micro-batch's mean loss is weighted by its share of the group's samples, so the
    gradient equals that of one batch holding the whole group. In a data-parallel run each rank
    trains its shard of every batch and the weight is the shard's share times the world size,
    since DDP averages gradients over ranks: the step is still that of the whole group.

    Returns:
        The summed training loss over the group's samples (all ranks), and the sample count.
    """
    cfg = session.config.train
    model, device, world = session.model, session.device, session.world
    net = session.ddp if session.ddp is not None else model
    model.train()
    session.optimizer.zero_grad(set_to_none=True)
    total = sum(len(idx) for idx in group)
    dtype = _AUTOCAST.get(cfg.precision)
    cached = session.features.get("train")
    loss_sum = 0.0
    length = None if cfg.bucketing else session.max_length
    for k, batch in enumerate(group):
        idx = shard(batch, world)
        weight = len(idx) / total * world.size
        if len(idx) == 0:  # a last batch smaller than the world: join the all-reduce with 0
            idx, weight = batch[:1], 0.0
        # DDP all-reduces on the group's last backward only; earlier ones accumulate locally
        sync = accumulating(session.ddp) if k < len(group) - 1 else contextlib.nullcontext()
        targets = torch.from_numpy(session.train.targets[idx]).to(device)
        with sync:
            if cached is not None:  # head_only: the head on the frozen encoder's features
                logits = cast(HeadOnly, model).classify(cached[torch.from_numpy(idx)].to(device))
            else:
                ids, mask = to_tensors(
                    [session.train.seqs[i] for i in idx],
                    pad_id=session.pad_id,
                    side=session.padding_side,
                    length=length,
                    device=device,
                )
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = net(ids, mask)
            loss = session.loss_fn(logits.float(), targets)
            session.scaler.scale(loss * weight).backward()
        if weight > 0:
            loss_sum += float(loss.detach()) * len(idx)
    (loss_sum,) = all_reduce_sum([loss_sum], world)
    if not math.isfinite(loss_sum):
        raise RunError(
            f"training loss became {loss_sum} at step {session.progress.global_step + 1}; "
            "lower train.optimizer.lr or set train.grad_clip"
        )
    scaler = session.scaler
    if cfg.grad_clip is not None:
        scaler.unscale_(session.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    # fp16: a step whose gradients overflowed is skipped and the scale lowered (the loss itself
    # is computed in fp32, so the finite check above still holds)
    scaler.step(session.optimizer)
    scaler.update()
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
        disable=not _show_progress(cfg.progress and session.world.is_main),
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
    cached = session.features.get("validation") if split is None else None
    split = split if split is not None else session.validation
    task = session.config.task
    if cached is not None:  # head_only: the head on the frozen encoder's features
        logits = _classify(session.model, cached, session.device)
    else:
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
    scores = metric_scores(task, activate_logits(task, logits).numpy())
    metrics = compute_metrics(task, split.targets, scores, list(session.labels.labels))
    return {"val_loss": val_loss, **{f"val_{k}": float(v) for k, v in metrics.items()}}


@torch.no_grad()
def _classify(model: nn.Module, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        logits = cast(HeadOnly, model).classify(features.to(device)).float().cpu()
    finally:
        model.train(was_training)
    return logits


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
            **validate(session),
            "lr": current_lr(session.optimizer),
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
    session.schedule.after_epoch(record)
    improved = session.best.update(float(record[session.best.monitor]), epoch + 1)
    # a NaN monitor (e.g. ROC AUC on one class) never improves; still keep a best checkpoint
    if main and (improved or not session.paths.weights("best").is_file()):
        save_weights(session.paths.weights("best"), session.model, {"epoch": str(epoch + 1)})
    stop = session.early_stopping.step(record) if session.early_stopping is not None else False
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
