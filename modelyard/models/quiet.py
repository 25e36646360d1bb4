"""Quiet third-party logging while a Hugging Face model loads (shared by the pretrained families).

Loading a model makes transformers import torchao when it is installed (the mobile extra's
litert-torch pulls it in); torchao then logs that its optional CUDA kernels are missing, which
says nothing to a user here. transformers itself draws progress bars and logs at info level.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

NOISY_ON_IMPORT = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_loggers(names: tuple[str, ...] = NOISY_ON_IMPORT) -> Iterator[None]:
    """Only errors from the ``names`` loggers inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bar and only errors from transformers while a model loads."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
