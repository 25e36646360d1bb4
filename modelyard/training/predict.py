"""Torch predictions from a run, before export: rebuild the model, score texts.

The same batched forward pass serves the training loop's validation, so validation metrics and
``predict_texts`` cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from modelyard.errors import RunError
from modelyard.models import AdapterModel, build_model, capabilities
from modelyard.runs import Run
from modelyard.tasks import Task, get_task
from modelyard.tokenize import encode, load_tokenizer, tokenizer_info
from modelyard.training.checkpoint import load_weights
from modelyard.training.collate import BatchFn, S, TokenBatches, encoded_split


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (stable sort), so little padding is computed."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def forward_logits(
    model: nn.Module,
    split: S,
    batch: BatchFn[S],
    *,
    batch_size: int,
    call: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Raw model outputs for every example of ``split``, in split order.

    Args:
        model: a model following the models contract (``forward(ids, mask) -> (B, K)``).
        split: the examples (token ids, or features computed once).
        batch: the run's batch function: indices of ``split`` → the forward's inputs.
        batch_size: examples per forward pass, batched by length (stable sort).
        call: what the inputs go through instead of ``model`` (e.g. its ``features``, or its
            head on features), in the same eval mode.

    Returns:
        ``(N, K)`` float32 logits (or what ``call`` returns) on the CPU.
    """
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    try:
        for idx in length_sorted_batches(split.lengths, batch_size):
            logits = (call or model)(*batch.inputs(split, idx)).float().cpu()  # (B, K)
            if out is None:
                out = torch.empty((len(split), logits.shape[1]), dtype=torch.float32)
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
    if capabilities(run.config.model).merges_adapters:
        # LoRA adapters are folded into their weights: same outputs, plain graph
        cast(AdapterModel, model).merge_adapters()
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
    batch = TokenBatches(pad_id=info.pad_id, side=info.padding_side, length=None, device=device)
    logits = forward_logits(model, encoded_split(seqs), batch, batch_size=batch_size)
    return activate_logits(run.task, logits).numpy().astype(np.float32, copy=False)
