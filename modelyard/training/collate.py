"""Splits ready for batches, and the one function that turns a split's indices into a batch.

Setup builds the batch function once (:class:`TokenBatches` from the tokenizer's padding
settings and ``train.bucketing``; :class:`FeatureBatches` when a frozen encoder's features were
computed once); steps, validation and prediction take a :class:`Batch` from it, never padding
ids, sides, lengths or devices one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np
import torch

from modelyard.tokenize import pad_batch
from modelyard.tokenize.chat import IGNORE_INDEX

if TYPE_CHECKING:
    from modelyard.data import Examples
    from modelyard.data.chat import GenerationInput


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


@dataclass
class ChatSplit:
    """Conversations encoded once for a causal LM: token ids and, per token, its label (the id
    where the token is learnt, ``IGNORE_INDEX`` elsewhere)."""

    seqs: list[list[int]]
    labels: list[list[int]]
    lengths: np.ndarray
    source: str
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0))  # none: the labels are ids

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def learnt(self) -> np.ndarray:
        """How many tokens of each record are learnt (N,)."""
        counts = (sum(1 for y in labels if y != IGNORE_INDEX) for labels in self.labels)
        return np.fromiter(counts, dtype=np.int64, count=len(self.labels))


S = TypeVar("S", EncodedSplit, FeatureSplit, ChatSplit)
S_contra = TypeVar("S_contra", EncodedSplit, FeatureSplit, ChatSplit, contravariant=True)


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


@dataclass(frozen=True)
class ChatBatches:
    """Causal LM batches: ids and mask padded on the right to the batch's longest record, and
    ``select``, the positions whose next token is learnt; the targets are those next tokens
    (N,), so the model computes logits for those positions alone."""

    pad_id: int
    device: torch.device

    def inputs(self, split: ChatSplit, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        return self._tensors(split, idx)[:3]

    def __call__(self, split: ChatSplit, idx: np.ndarray) -> Batch:
        *inputs, targets = self._tensors(split, idx)
        return Batch(tuple(inputs), targets)

    def _tensors(self, split: ChatSplit, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        rows = [split.seqs[i] for i in idx]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)  # (B, T)
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)  # (B, T)
        mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, T)
        for row, i in enumerate(idx):
            n = len(split.seqs[i])
            ids[row, :n] = split.seqs[i]
            labels[row, :n] = split.labels[i]
            mask[row, :n] = 1
        select = np.zeros((len(rows), width), dtype=bool)  # position t predicts token t + 1
        select[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        targets = labels[:, 1:][select[:, :-1]]  # (N,)
        return tuple(torch.from_numpy(a).to(self.device) for a in (ids, mask, select, targets))


@dataclass
class Data(Generic[S]):
    """A run's data: its splits, the test examples and the batch function over the splits."""

    train: S
    validation: S
    batch: BatchFn[S]
    # the test file, scored by ``finish``: labelled examples, or a generative run's inputs
    test: Examples | list[GenerationInput] | None = None


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
