"""bucket_batches: every index once, less padding than random batches, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.data import bucket_batches

pytestmark = pytest.mark.unit


def padded_tokens(batches: list[np.ndarray], lengths: np.ndarray) -> int:
    return sum(int(lengths[b].max()) * len(b) for b in batches)


def test_covers_every_index_once() -> None:
    lengths = np.random.default_rng(0).integers(1, 200, size=1003)
    for shuffle in (True, False):
        batches = bucket_batches(lengths, 32, shuffle=shuffle, rng=np.random.default_rng(1))
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(1003))
        assert all(b.dtype == np.int64 for b in batches)
        assert sorted(len(b) for b in batches)[1:] == [32] * (len(batches) - 1)


def test_reduces_padding_vs_random_batches() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=2000)
    perm = rng.permutation(2000)
    random_batches = [perm[i : i + 32] for i in range(0, 2000, 32)]
    bucketed = bucket_batches(lengths, 32, shuffle=True, rng=np.random.default_rng(5))
    assert padded_tokens(bucketed, lengths) < 0.7 * padded_tokens(random_batches, lengths)


def test_deterministic_for_a_given_rng_state_and_shuffles_between_epochs() -> None:
    lengths = np.arange(500) % 37
    a = bucket_batches(lengths, 16, shuffle=True, rng=np.random.default_rng(7), bucket_factor=4)
    b = bucket_batches(lengths, 16, shuffle=True, rng=np.random.default_rng(7), bucket_factor=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    rng = np.random.default_rng(7)
    epoch1 = bucket_batches(lengths, 16, shuffle=True, rng=rng)
    epoch2 = bucket_batches(lengths, 16, shuffle=True, rng=rng)
    assert not all(np.array_equal(x, y) for x, y in zip(epoch1, epoch2, strict=True))


def test_no_shuffle_is_sorted_order() -> None:
    lengths = np.array([5, 1, 3, 1, 9, 2])
    batches = bucket_batches(lengths, 4, shuffle=False, rng=None)
    assert [b.tolist() for b in batches] == [[1, 3, 5, 2], [0, 4]]


def test_empty_and_bad_arguments() -> None:
    assert bucket_batches(np.array([], dtype=np.int64), 8, shuffle=True, rng=None) == []
    with pytest.raises(ValueError, match="batch_size"):
        bucket_batches(np.array([1]), 0, shuffle=False, rng=None)
