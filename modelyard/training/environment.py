"""The process a run trains in: seeds, the device, torch's thread and determinism settings."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import numpy as np
import torch

from modelyard.config import Config
from modelyard.errors import ConfigError

log = logging.getLogger("modelyard.training")


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


def warn_slow_bf16(precision: str, device: torch.device) -> None:
    """Say so when bf16 autocast on this CPU is emulated: measured 15x slower than fp32 (AVX2)."""
    if precision != "bf16" or device.type != "cpu":
        return
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN: nothing to tell
        return
    if not native:
        log.warning(
            "train.precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so "
            "autocast is much slower than fp32 here; use precision fp32"
        )


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
