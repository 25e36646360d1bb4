"""Checkpoint weights as saved on disk, an exact comparison of two sets of them, and a run's
history without its wall-clock fields (what a resumed run must reproduce exactly)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    """A run's ``best`` or ``last`` checkpoint, read back from its safetensors file."""
    return load_file(str(run_dir / "checkpoints" / f"{which}.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-identical: the same names and ``torch.equal`` tensors."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


TIMING_KEYS = ("epoch_time_s", "samples_per_s")


def without_timing(history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch records minus the wall-clock fields, which differ from run to run."""
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]
