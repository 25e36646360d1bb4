"""Torch predictions from a run, before export: rebuild the model, score texts.

The same batched forward pass serves the training loop's validation, so validation metrics and
``predict_texts`` cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelyard.errors import RunError
from modelyard.models import build_model
from modelyard.runs import Run
from modelyard.tasks import Task, get_task
from modelyard.tokenize import encode, load_tokenizer, pad_batch, tokenizer_info
from modelyard.training.checkpoint import load_weights


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (stable sort), so little padding is computed."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def to_tensors(
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    side: str,
    length: int | None,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of id lists (to ``length`` or to the longest) into ``(ids, mask)`` tensors."""
    batch = pad_batch(
        seqs, pad_id=pad_id, side="left" if side == "left" else "right", length=length
    )
    ids = torch.from_numpy(np.ascontiguousarray(batch.ids, dtype=np.int64))  # (B, T)
    mask = torch.from_numpy(np.ascontiguousarray(batch.mask, dtype=np.int64))  # (B, T)
    if torch.device(device).type == "cuda":
        # page-locked host memory: the copy runs asynchronously, overlapping the step before
        return (
            ids.pin_memory().to(device, non_blocking=True),
            mask.pin_memory().to(device, non_blocking=True),
        )
    return ids, mask


@torch.no_grad()
def forward_logits(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    *,
    batch_size: int,
    pad_id: int = 0,
    side: str = "right",
    length: int | None = None,
    device: torch.device | str = "cpu",
    call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Raw model outputs for every sequence, in input order.

    Args:
        model: a model following the models contract (``forward(ids, mask) -> (B, K)``).
        seqs: token id lists (truncated, unpadded).
        batch_size: sequences per forward pass.
        pad_id: padding id.
        side: padding side.
        length: pad every batch to this length (the plain way); ``None`` pads to the batch's
            longest sequence after sorting by length.
        device: where to run.
        call: what to run instead of ``model`` (e.g. its ``features``), in the same eval mode.

    Returns:
        ``(N, K)`` float32 logits (or what ``call`` returns) on the CPU.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    out: torch.Tensor | None = None
    try:
        for idx in length_sorted_batches(lengths, batch_size):
            ids, mask = to_tensors(
                [seqs[i] for i in idx], pad_id=pad_id, side=side, length=length, device=device
            )
            logits = (call or model)(ids, mask).float().cpu()  # (B, K)
            if out is None:
                out = torch.empty((len(seqs), logits.shape[1]), dtype=torch.float32)
            out[torch.from_numpy(idx)] = logits
    finally:
        model.train(was_training)
    return out if out is not None else torch.empty((0, 0), dtype=torch.float32)


# the torch form of each task's activation (the runtime's is numpy: runtime.predictor)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "softmax": lambda logits: torch.softmax(logits, dim=-1),
    "identity": lambda logits: logits,
}


def activate_logits(task: str | Task, logits: torch.Tensor) -> torch.Tensor:
    """Post-activation scores: the task's activation (sigmoid, softmax or identity)."""
    return ACTIVATIONS[get_task(task).activation](logits)


def metric_scores(task: str | Task, scores: np.ndarray) -> np.ndarray:
    """The score layout the task's metrics read: (N,) for a one-output task, else (N, C)."""
    return get_task(task).flat(scores)


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run.load(run)


def build_run_model(run: Run) -> nn.Module:
    """A freshly initialised model with the run's architecture (weights not loaded)."""
    info = run.info
    try:
        return build_model(
            run.config.model,
            task=run.task,
            vocab_size=int(info["vocab_size"]),
            num_outputs=int(info["num_outputs"]),
            max_length=int(info.get("max_length", run.config.tokenizer.max_length)),
            pad_id=int(info.get("pad_id", 0)),
        )
    except KeyError as exc:
        raise RunError(f"{run.paths.run_json}: missing field {exc}") from exc


def load_model(run: Run | str | Path, which: str = "best") -> nn.Module:
    """Rebuild a run's model from its config and load a checkpoint's weights.

    Args:
        run: a :class:`Run` or its directory.
        which: ``best`` (by ``train.monitor``) or ``last``.

    Returns:
        The model on the CPU, in eval mode.
    """
    run = _as_run(run)
    model = build_run_model(run)
    load_weights(run.paths.weights(which), model)
    # LoRA adapters (pretrained kind) are folded into their weights: same outputs, plain graph
    merge_adapters = getattr(model, "merge_adapters", None)
    if callable(merge_adapters):
        merge_adapters()
    return model.eval()


def predict_texts(
    run: Run | str | Path,
    texts: Sequence[str],
    *,
    which: str = "best",
    batch_size: int = 64,
    model: nn.Module | None = None,
) -> np.ndarray:
    """Score raw texts with a run's torch model (quick checks before export).

    Args:
        run: a :class:`Run` or its directory.
        texts: raw texts; the run's tokenizer cleans, tokenizes and truncates them.
        which: checkpoint to load when ``model`` is not given.
        batch_size: texts per forward pass (batched by length).
        model: an already loaded model, to skip reloading.

    Returns:
        ``(N, num_outputs)`` float32 scores after the task's activation (probabilities, or values
        for regression), in input order.
    """
    run = _as_run(run)
    if model is None:
        model = load_model(run, which)
    tok = load_tokenizer(run.paths.tokenizer)
    info = tokenizer_info(tok)
    seqs = encode(tok, list(texts))
    if not seqs:
        return np.zeros((0, int(run.info.get("num_outputs", 1))), dtype=np.float32)
    device = next(model.parameters()).device
    logits = forward_logits(
        model,
        seqs,
        batch_size=batch_size,
        pad_id=info.pad_id,
        side=info.padding_side,
        device=device,
    )
    return activate_logits(run.task, logits).numpy().astype(np.float32, copy=False)
