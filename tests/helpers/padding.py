"""Batches that pad the same text in different ways: the models' padding-invariance checks."""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 37


def place(rows: list[tuple[torch.Tensor, int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Put each (ids, start) row into a (B, width) batch of zeros; the mask marks the ids."""
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (seq, start) in enumerate(rows):
        ids[r, start : start + len(seq)] = seq
        mask[r, start : start + len(seq)] = 1
    return ids, mask


def sample_texts(vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 6-token text and two longer batch-mates (37 and 25 tokens), seeded."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(1, vocab, (6,), generator=gen)
    long_a = torch.randint(1, vocab, (WIDTH,), generator=gen)
    long_b = torch.randint(1, vocab, (25,), generator=gen)
    return text, long_a, long_b


@torch.no_grad()
def padding_variants(
    model: nn.Module, text: torch.Tensor, long_a: torch.Tensor, long_b: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``text``'s output alone, and padded right, left and on both sides among batch-mates."""
    width = WIDTH
    alone = model(text[None], torch.ones(1, len(text), dtype=torch.long))[0]
    right = model(*place([(long_a, 0), (text, 0), (long_b, 0)], width))[1]
    left = model(
        *place([(long_a, 0), (long_b, width - len(long_b)), (text, width - len(text))], width)
    )[2]
    middle = model(*place([(text, 9), (long_a, 0)], width))[0]
    return alone, [right, left, middle]
