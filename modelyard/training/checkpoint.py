"""Checkpoint files, written atomically and read back without unpickling arbitrary objects.

Weights are safetensors. Training state (optimizer, scheduler, RNG states, counters, history) is a
``torch.save`` of plain containers, tensors and numbers only, so ``torch.load(weights_only=True)``
reads it. The state file also carries its own copy of the weights: resume then reads one file
that was replaced atomically, and a crash between writing ``last.safetensors`` and
``last.state.pt`` can never pair new weights with an old optimizer state.
"""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modelyard.atomic import atomic_path, atomic_write, atomic_write_text
from modelyard.errors import RunError
from modelyard.metrics import json_safe
from modelyard.models.capabilities import PartlyTrained
from modelyard.training.distributed import gather
from modelyard.training.state import STATE_FORMAT, Progress, Session

log = logging.getLogger("modelyard.training")


# ------------------------------------------------------------------------------------ weights
def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint of ``model`` holds: its ``state_dict``, or only the weights training
    changes for a model that says so (:class:`~modelyard.models.capabilities.PartlyTrained`)."""
    if isinstance(model, PartlyTrained):
        return model.trained_state_dict()
    return model.state_dict()


def load_trained_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load what :func:`trained_state` saved (strict: every key must match)."""
    if isinstance(model, PartlyTrained):
        model.load_trained_state(tensors)
    else:
        model.load_state_dict(tensors, strict=True)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to plain CPU tensors
    return {k: v.detach().cpu().contiguous().clone() for k, v in trained_state(model).items()}


def save_weights(
    path: str | Path, model: nn.Module, metadata: dict[str, str] | None = None
) -> None:
    """Save a model's ``state_dict`` as safetensors, atomically."""
    tensors = _tensors(model)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load safetensors weights into ``model`` (strict: every key must match)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        load_trained_state(model, load_file(str(path)))
    except (RuntimeError, ValueError) as exc:
        raise RunError(f"{path}: the weights do not fit the configured model: {exc}") from exc


# ----------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The python, numpy and torch RNG states as plain ints, lists and tensors."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": [int(k) for k in np_keys],
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    keys = np.asarray(n["keys"], dtype=np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ training state
def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` a training-state dict atomically (plain containers and tensors only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda fh: fh.write(buffer.getbuffer()))


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a training-state dict saved by :func:`save_state`, without arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: training state not found; nothing to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which one
        raise RunError(f"{path}: cannot read training state: {exc}") from exc
    if not isinstance(state, dict):
        raise RunError(f"{path}: not a modelyard training state")
    return state


# ---------------------------------------------------------------------------- a session's state
def save_checkpoint(session: Session) -> None:
    """Write ``last.safetensors`` and ``last.state.pt`` (each atomically).

    Every rank calls it (its RNG state is gathered); rank 0 alone writes. The weights and
    optimizer state are rank 0's: DDP keeps them equal on every rank.
    """
    rngs = gather(rng_state(), session.world)
    if not session.world.is_main:
        return
    p = session.progress
    meta = {"epoch": str(p.epoch), "step_in_epoch": str(p.step_in_epoch)}
    save_weights(session.paths.weights("last"), session.trainer.model, meta)
    state = {
        "format": STATE_FORMAT,
        "model": _tensors(session.trainer.model),
        "optimizer": session.trainer.optimizer.state_dict(),
        "schedule": session.trainer.schedule.state_dict(),
        "scaler": session.trainer.scaler.state_dict(),
        "rng": rngs[0],
        "world_size": session.world.size,
        "rank_rng": rngs,  # rank r resumes with rank_rng[r]
        "progress": asdict(p),
        "best": session.best.state_dict(),
        "early_stopping": (
            session.early_stopping.state_dict() if session.early_stopping is not None else None
        ),
    }
    save_state(session.paths.state, state)


def trained_world_size(path: str | Path) -> int:
    """How many processes trained the run whose training state is ``path``."""
    return int(load_state(path).get("world_size", 1))


def restore_checkpoint(session: Session) -> None:
    """Load the last checkpoint into a freshly set-up session (the resume path)."""
    state = load_state(session.paths.state)
    if state.get("format") != STATE_FORMAT:
        raise RunError(
            f"{session.paths.state}: unknown training-state format {state.get('format')}"
        )
    saved_world = int(state.get("world_size", 1))
    if saved_world != session.world.size:
        # another N would shard differently and lack RNG states: the resume would not be exact
        raise RunError(
            f"{session.paths.dir} was trained with {saved_world} process(es); resume it with "
            f"--nproc {saved_world} (this run has {session.world.size})"
        )
    parts = session.trainer
    try:
        load_trained_state(parts.model, state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as exc:
        raise RunError(
            f"{session.paths.state}: checkpoint does not fit the configured model: {exc}"
        ) from exc
    parts.schedule.load_state_dict(state["schedule"])
    if state.get("scaler"):  # fp16 runs; empty for a disabled scaler
        parts.scaler.load_state_dict(state["scaler"])
    session.best.load_state_dict(state["best"])
    if session.early_stopping is not None and state["early_stopping"] is not None:
        session.early_stopping.load_state_dict(state["early_stopping"])
    known = {f.name for f in fields(Progress)}
    session.progress = Progress(**{k: v for k, v in state["progress"].items() if k in known})
    # the epochs the checkpoint knows are the truth: drop lines a crash left after it
    if session.world.is_main:
        lines = "".join(json.dumps(json_safe(r)) + "\n" for r in session.progress.history)
        atomic_write_text(session.paths.metrics, lines)
    set_rng_state(state.get("rank_rng", [state["rng"]])[session.world.rank])
    p = session.progress
    log.info("resuming %s at epoch %d, batch %d", session.paths.dir, p.epoch + 1, p.step_in_epoch)
