"""Turn texts into id lists and id lists into padded arrays; read a tokenizer's settings back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tokenizers import Tokenizer


@dataclass(frozen=True)
class PaddedBatch:
    """A padded batch: ``ids`` and ``mask`` are int64 arrays of shape (B, T); mask 1 = real."""

    ids: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class TokenizerInfo:
    """The settings a model and a runtime need from a tokenizer.

    ``unk_id`` is ``None`` for a tokenizer without an unknown token (byte-level BPE).
    ``max_length`` is ``None`` when truncation is off.
    """

    vocab_size: int
    pad_id: int
    unk_id: int | None
    max_length: int | None
    padding_side: str
    truncation_side: str


def encode(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Encode texts, truncated by the tokenizer's settings and without padding.

    Args:
        tok: a tokenizer from :func:`build_tokenizer` or a loaded tokenizer.json.
        texts: the texts.

    Returns:
        One id list per text. A text that yields no token becomes ``[unk id]`` (the pad id when
        the tokenizer has no unknown token), so every text has at least one token.
    """
    # One batched call into Rust; the tokenizer pads the batch, so cut the padding off again
    # rather than toggling padding on a tokenizer that other threads may be using.
    # encode_batch_fast (tokenizers >= 0.21) skips offsets, which nothing here reads
    encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
    encodings = encode_batch(list(texts))
    padding = tok.padding
    left = padding is not None and padding["direction"] == "left"
    fallback: list[int] | None = None
    out: list[list[int]] = []
    for enc in encodings:
        ids = enc.ids
        if padding is not None:
            n = sum(enc.attention_mask)
            ids = ids[len(ids) - n :] if left else ids[:n]
        if not ids:
            if fallback is None:
                fallback = [_fallback_id(tok)]
            ids = list(fallback)
        out.append(ids)
    return out


def pad_batch(
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    side: Literal["left", "right"] = "right",
    length: int | None = None,
) -> PaddedBatch:
    """Pad id lists into rectangular arrays.

    Args:
        seqs: id lists (already truncated).
        pad_id: the id written into padding positions.
        side: ``right`` pads after the ids, ``left`` before them.
        length: pad to this many positions (default: the longest sequence).

    Returns:
        A :class:`PaddedBatch` with int64 ``ids`` and ``mask`` of shape (len(seqs), T).

    Raises:
        ValueError: ``side`` is unknown or a sequence is longer than ``length``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max((len(s) for s in seqs), default=0)
    width = longest if length is None else length
    if longest > width:
        raise ValueError(f"a sequence has {longest} ids, more than length={width}")
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        n = len(seq)
        if n == 0:
            continue
        start = 0 if side == "right" else width - n
        ids[row, start : start + n] = seq
        mask[row, start : start + n] = 1
    return PaddedBatch(ids=ids, mask=mask)


def tokenizer_info(tok: Tokenizer) -> TokenizerInfo:
    """Read vocabulary size, special ids and length settings back from a tokenizer object.

    Args:
        tok: a built tokenizer or one loaded from tokenizer.json.

    Returns:
        A :class:`TokenizerInfo`; without padding settings the pad id is 0 and the side right.
    """
    padding = tok.padding
    truncation = tok.truncation
    return TokenizerInfo(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        pad_id=int(padding["pad_id"]) if padding is not None else 0,
        unk_id=_unk_id(tok),
        max_length=int(truncation["max_length"]) if truncation is not None else None,
        padding_side=str(padding["direction"]) if padding is not None else "right",
        truncation_side=str(truncation["direction"]) if truncation is not None else "right",
    )


def _unk_id(tok: Tokenizer) -> int | None:
    unk_token = getattr(tok.model, "unk_token", None)
    if unk_token is not None:
        return tok.token_to_id(unk_token)
    if type(tok.model).__name__ == "Unigram":
        # the Python Unigram model does not expose its unk id; the serialized model does
        unk = json.loads(tok.model.__getstate__())["unk_id"]
        return int(unk) if unk is not None else None
    return None


def _fallback_id(tok: Tokenizer) -> int:
    unk = _unk_id(tok)
    if unk is not None:
        return unk
    padding = tok.padding
    return int(padding["pad_id"]) if padding is not None else 0
