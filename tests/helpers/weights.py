"""Checkpoint weights as saved on disk, and an exact comparison of two sets of them."""

from __future__ import annotations

from pathlib import Path

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
