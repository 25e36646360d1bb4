"""Splits ready for batches, and the one function that turns a split's indices into a batch.

Setup builds the batch function once (:class:`TokenBatches` from the tokenizer's padding
settings and ``train.bucketing``; :class:`FeatureBatches` when a frozen encoder's features were
computed once); steps, validation and prediction take a :class:`Batch` from it, never padding
ids, sides, lengths or devices one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np
import torch

from modelyard.tokenize import pad_batch

if TYPE_CHECKING:
    from modelyard.data import Examples


@dataclass
class EncodedSplit:
    """A split's texts, encoded once: token ids, their lengths and the encoded targets."""

    seqs: list[list[int]]
    lengths: np.ndarray
    targets: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass
class FeatureSplit:
    """A split as a frozen encoder sees it: its pooled features (N, C), computed once.

    ``lengths`` are the texts' token lengths, so batches are drawn exactly as for the texts.
    """

    features: torch.Tensor
    lengths: np.ndarray
    targets: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.lengths)


S = TypeVar("S", EncodedSplit, FeatureSplit)
S_contra = TypeVar("S_contra", EncodedSplit, FeatureSplit, contravariant=True)


@dataclass(frozen=True)
class Batch:
    """What one forward pass takes and what its loss compares with.

    Attributes:
        inputs: the arguments of the model's forward: ``(ids, mask)`` (B, T), or ``(features,)``.
        targets: the encoded targets (B,) or (B, K), on the batch's device.
        weights: per-example loss weights; ``None``: every example counts once (all runs today).
    """

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor
    weights: torch.Tensor | None = None


class BatchFn(Protocol[S_contra]):
    """Indices of a split → its inputs (prediction), or a whole :class:`Batch` (training)."""

    @property
    def device(self) -> torch.device: ...
    def inputs(self, split: S_contra, idx: np.ndarray) -> tuple[torch.Tensor, ...]: ...
    def __call__(self, split: S_contra, idx: np.ndarray) -> Batch: ...


@dataclass(frozen=True)
class TokenBatches:
    """Token id batches padded with the tokenizer's pad id on its side, on ``device``.

    Attributes:
        length: pad every batch to this length (``train.bucketing`` off: the plain way);
            ``None`` pads to the batch's longest text.
    """

    pad_id: int
    side: str
    length: int | None
    device: torch.device

    def inputs(self, split: EncodedSplit, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        return to_tensors(
            [split.seqs[i] for i in idx],
            pad_id=self.pad_id,
            side=self.side,
            length=self.length,
            device=self.device,
        )

    def __call__(self, split: EncodedSplit, idx: np.ndarray) -> Batch:
        targets = torch.from_numpy(split.targets[idx]).to(self.device)
        return Batch(self.inputs(split, idx), targets)


@dataclass(frozen=True)
class FeatureBatches:
    """Rows of features computed once (``head_only``), on ``device``."""

    device: torch.device

    def inputs(self, split: FeatureSplit, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        return (split.features[torch.from_numpy(idx)].to(self.device),)

    def __call__(self, split: FeatureSplit, idx: np.ndarray) -> Batch:
        targets = torch.from_numpy(split.targets[idx]).to(self.device)
        return Batch(self.inputs(split, idx), targets)


@dataclass
class Data(Generic[S]):
    """A run's data: its splits, the test examples and the batch function over the splits."""

    train: S
    validation: S
    batch: BatchFn[S]
    test: Examples | None = None  # the test file, scored by ``finish``


def to_tensors(
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    side: str,
    length: int | None,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of id lists (to ``length`` or to the longest) into ``(ids, mask)`` tensors."""
    batch = pad_batch(
        seqs, pad_id=pad_id, side="left" if side == "left" else "right", length=length
    )
    ids = torch.from_numpy(np.ascontiguousarray(batch.ids, dtype=np.int64))  # (B, T)
    mask = torch.from_numpy(np.ascontiguousarray(batch.mask, dtype=np.int64))  # (B, T)
    if torch.device(device).type == "cuda":
        # page-locked host memory: the copy runs asynchronously, overlapping the step before
        return (
            ids.pin_memory().to(device, non_blocking=True),
            mask.pin_memory().to(device, non_blocking=True),
        )
    return ids, mask


def encoded_split(
    seqs: list[list[int]], targets: np.ndarray | None = None, source: str = ""
) -> EncodedSplit:
    """Token id lists as a split, their lengths counted once; without targets: texts to score."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    return EncodedSplit(seqs, lengths, targets if targets is not None else np.zeros(0), source)
