"""Which texts go into which batch: a pure function of ``(seed, epoch)``, so resume is exact."""

from __future__ import annotations

import numpy as np

from modelyard.config import Config
from modelyard.data import bucket_batches
from modelyard.training.state import Loop


def epoch_batches(loop: Loop, epoch: int) -> list[np.ndarray]:
    """The training batches (index arrays) of ``epoch``: a pure function of ``(seed, epoch)``."""
    cfg = loop.config
    rng = np.random.default_rng([cfg.seed % 2**32, epoch])
    return batch_indices(loop.data.train.lengths, cfg.train.batch_size, cfg.train.bucketing, rng)


def batch_indices(
    lengths: np.ndarray, batch_size: int, bucketing: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    """Index batches: length buckets (shuffled) when ``bucketing``, else a plain permutation."""
    if bucketing:
        return bucket_batches(lengths, batch_size, shuffle=True, rng=rng)
    order = rng.permutation(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batches_per_epoch(config: Config, lengths: np.ndarray) -> int:
    """How many batches one epoch has (the same for every epoch's shuffle)."""
    tcfg = config.train
    rng = np.random.default_rng([config.seed % 2**32, 0])
    return len(batch_indices(lengths, tcfg.batch_size, tcfg.bucketing, rng))
