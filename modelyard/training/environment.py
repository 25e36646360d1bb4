"""The process a run trains in: seeds, the device, torch's thread and determinism settings."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

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


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a config error.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: in a data-parallel run, this process's rank on its node: CUDA runs use
            ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' was asked for, but torch sees no CUDA device")
    device = torch.device(name)
    if local_rank is not None:
        if device.index is not None:
            raise ConfigError(
                f"train.device {name}: a data-parallel rank uses cuda:LOCAL_RANK; set cuda"
            )
        device = torch.device("cuda", local_rank)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"train.device {name}: torch sees {count} CUDA device(s)")
    if device.index is not None:
        torch.cuda.set_device(device)
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """fp16 trains on CUDA only; bf16 on a CPU without native bf16 gets a warning.

    Raises:
        ConfigError: fp16 on a CPU (oneDNN has no fp16 recurrent kernels, and on this kind of
            CPU it is emulated: bf16 is the CPU's reduced precision).
    """
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision fp16 needs a CUDA device (this run is on {device.type}); "
            "use bf16 or fp32"
        )
    warn_slow_bf16(precision, device)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``train.precision``; ``None`` for fp32 (no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def warn_slow_bf16(precision: str, device: torch.device) -> None:
    """Say so when bf16 autocast on this CPU is emulated (no AVX512-BF16): far slower than fp32."""
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
    """Thread count and deterministic algorithms for the run; the previous values come back.

    Deterministic algorithms make torch fill every new tensor's memory by default (a debugging
    aid that catches reads of uninitialised memory); the kernels here never read it, so, as
    torch's documentation allows, the fills are off: the seed recipe's steps are 7% faster
    (``bench/seed_profile.py --parts fill``) and the results stay deterministic.
    """
    determinism: Any = torch.utils.deterministic  # a module with a property: typed loosely
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = determinism.fill_uninitialized_memory
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    determinism.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        determinism.fill_uninitialized_memory = fill
