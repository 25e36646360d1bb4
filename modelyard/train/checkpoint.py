"""Checkpoint files, written atomically and read back without unpickling arbitrary objects.

Weights are safetensors. Training state (optimizer, scheduler, RNG states, counters, history) is a
``torch.save`` of plain containers, tensors and numbers only, so ``torch.load(weights_only=True)``
reads it. The state file also carries its own copy of the weights: resume then reads one file
that was replaced atomically, and a crash between writing ``last.safetensors`` and
``last.state.pt`` can never pair new weights with an old optimizer state.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modelyard.errors import RunError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    On any error the temporary file is removed, so readers see either the old file or the new
    one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # the rename itself is durable only once the directory entry is flushed (POSIX only)
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically through ``write(fileobj)``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
        fh.flush()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) atomically."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


# ------------------------------------------------------------------------------------ weights
def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to plain CPU tensors
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


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
    model.load_state_dict(load_file(str(path)), strict=True)


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
