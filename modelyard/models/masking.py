"""Padding and masking every family shares; all ops here export to ONNX with dynamic B and T.

Models accept padding on either side. Each forward first moves the real tokens of every row to
the front (:func:`to_right_padding`), so position ``t < length`` is real and everything after it
is padding; the families then only ever read outputs that saw real tokens, which makes a text's
result independent of its batch-mates and of how (and how much) it was padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RightPadded:
    """A batch with its real tokens at the front of every row."""

    ids: Tensor  # (B, T) long
    valid: Tensor  # (B, T) bool: position < length
    lengths: Tensor  # (B,) long, at least 1


def to_right_padding(input_ids: Tensor, attention_mask: Tensor) -> RightPadded:
    """Rotate each row so its (contiguous) real tokens start at position 0.

    Rotating by the number of leading pads needs only cumsum/sum/gather, which export; the
    leading pads land at the end, after any trailing pads, so the row is right padded. A row
    without any real token is treated as one token long so attention and pooling stay finite.

    Args:
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens, 0 for padding; contiguous per row.

    Returns:
        A :class:`RightPadded` batch.
    """
    mask = attention_mask.to(torch.long)
    seq_len = input_ids.shape[1]
    leading = (mask.cumsum(dim=1) == 0).sum(dim=1)  # (B,)
    positions = torch.arange(seq_len, device=input_ids.device)  # (T,)
    # T as a tensor: the exporter cannot lower a remainder by a symbolic int (torch 2.13)
    width = positions[-1:] + 1  # (1,)
    index = (positions[None, :] + leading[:, None]) % width  # (B, T)
    lengths = mask.sum(dim=1).clamp(min=1)  # (B,)
    return RightPadded(
        ids=input_ids.gather(1, index),
        valid=positions[None, :] < lengths[:, None],
        lengths=lengths,
    )


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t]]`` for a (B, T, C) tensor and a (B, T) index."""
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


def gather_position(x: Tensor, position: Tensor) -> Tensor:
    """``x[b, position[b]]``: one step per row of a (B, T, C) tensor -> (B, C)."""
    return gather_time(x, position[:, None]).squeeze(1)


def reverse_within_length(lengths: Tensor, seq_len: int) -> Tensor:
    """The (B, T) index that reverses each row's first ``length`` steps and keeps the rest.

    Applying it twice is the identity, so the same index maps a backward pass back.
    """
    positions = torch.arange(seq_len, device=lengths.device)[None, :]  # (1, T)
    flipped = lengths[:, None] - 1 - positions  # (B, T)
    return torch.where(positions < lengths[:, None], flipped, positions)


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean over real steps of a (B, T, C) tensor -> (B, C)."""
    weights = valid.to(x.dtype)[:, :, None]  # (B, T, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1)


def masked_max(x: Tensor, valid: Tensor) -> Tensor:
    """Max over real steps of a (B, T, C) tensor -> (B, C)."""
    return x.masked_fill(~valid[:, :, None], float("-inf")).amax(dim=1)
