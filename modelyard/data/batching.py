"""Length-bucketed batches: texts of similar length share a batch, so little of it is padding."""

from __future__ import annotations

import numpy as np


def bucket_batches(
    lengths: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    rng: np.random.Generator | None,
    bucket_factor: int = 50,
) -> list[np.ndarray]:
    """Group row indices into batches of texts with similar lengths.

    With ``shuffle``, the rows are shuffled, cut into chunks of ``bucket_factor * batch_size``,
    each chunk is sorted by length and cut into batches, and the batch order is shuffled: batches
    stay random from epoch to epoch while padding stays small. Without ``shuffle``, all rows are
    sorted by length (stable, ascending) and cut in order, which is deterministic (evaluation,
    prediction; put outputs back in place with the returned indices).

    Args:
        lengths: (N,) token count of each row.
        batch_size: rows per batch; only the last batch may be smaller.
        shuffle: shuffle rows into chunks and the batch order, using ``rng``.
        rng: the random source; the same state gives the same batches. When None and
            ``shuffle`` is set, a fresh unseeded generator is used.
        bucket_factor: chunk size in batches; larger sorts over more rows (less padding, less
            randomness).

    Returns:
        A list of int64 index arrays that together hold every index in ``range(N)`` once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bucket_factor < 1:
        raise ValueError(f"bucket_factor must be >= 1, got {bucket_factor}")
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable").astype(np.int64)
        return _cut(order, batch_size)
    gen = rng if rng is not None else np.random.default_rng()
    perm = gen.permutation(n).astype(np.int64)
    chunk = bucket_factor * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, n, chunk):
        part = perm[start : start + chunk]
        # stable sort keeps the shuffled order among equal lengths, so ties differ per epoch
        batches.extend(_cut(part[np.argsort(lengths[part], kind="stable")], batch_size))
    return [batches[i] for i in gen.permutation(len(batches))]


def _cut(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
