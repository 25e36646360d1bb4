"""What the exporters compare torch and the exported graph on, and how they report it.

The token ids come from the run's own texts (test, else validation, else training file) plus
random sequences of length 1, 2, 3, half and the full max length, so every graph is checked at the
edges of its sequence axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from modelyard.bundle import PaddingSide
from modelyard.data import read_table
from modelyard.errors import DataError
from modelyard.runs import Run
from modelyard.tokenize import PaddedBatch, encode, pad_batch

MAX_PARITY_TEXTS = 48


@dataclass
class ParityReport:
    """How far ONNX Runtime's raw outputs are from torch's on the same ids."""

    max_abs_diff: float
    atol: float
    num_texts: int
    batch_sizes: list[int]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def parity_sequences(
    run: Run, tokenizer: Tokenizer, vocab_size: int, max_length: int, seed: int = 0
) -> list[list[int]]:
    """Token ids to compare torch and ONNX Runtime on: real texts when readable, else synthetic.

    Real texts come from the run's test file, else its validation or training file. Random id
    sequences of length 1, a few in between and the full max length are always added, so the
    graph is checked at the edges of the dynamic sequence axis.
    """
    texts = sample_texts(run)
    seqs = encode(tokenizer, texts) if texts else []
    rng = np.random.default_rng(seed)
    for length in sorted({1, 2, 3, max(1, max_length // 2), max_length}):
        seqs.append([int(x) for x in rng.integers(1, max(vocab_size, 2), size=length)])
    return seqs


def example_batch(seqs: Sequence[Sequence[int]], *, pad_id: int, side: PaddingSide) -> PaddedBatch:
    """Two texts of different lengths, padded: the exporter specialises any axis of size 0 or 1,
    so the example has batch 2 and a sequence of at least 2, with padding in it."""
    by_length = sorted((list(s) for s in seqs), key=len)
    longest = by_length[-1]
    shorter = next((s for s in by_length if 1 < len(s) < len(longest)), by_length[0])
    return pad_batch([longest, shorter], pad_id=pad_id, side=side, length=max(2, len(longest)))


def sample_texts(run: Run) -> list[str]:
    """Up to MAX_PARITY_TEXTS texts spread evenly over the run's first readable data file."""
    data = run.config.data
    for source in (data.test, data.validation, data.train):
        if source is None:
            continue
        try:
            table = read_table(
                source, text=data.text, label=None, encoding=data.encoding, skip_bad_rows=True
            )
        except (DataError, OSError):
            continue
        # an even spread over the file, rather than only its first rows
        step = max(1, len(table.texts) // MAX_PARITY_TEXTS)
        return table.texts[::step][:MAX_PARITY_TEXTS]
    return []
