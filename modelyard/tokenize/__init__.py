"""Tokenizers (torch-free): every kind is a HF ``tokenizers.Tokenizer`` saved as tokenizer.json.

Public API: :func:`build_tokenizer`, :func:`load_tokenizer`, :func:`encode`, :func:`pad_batch`,
:func:`tokenizer_info`, :class:`PaddedBatch`, :class:`TokenizerInfo`.
"""

from __future__ import annotations

from modelyard.tokenize.builders import TOKENIZER_BUILDERS, build_tokenizer, load_tokenizer
from modelyard.tokenize.encoding import (
    PaddedBatch,
    TokenizerInfo,
    encode,
    pad_batch,
    tokenizer_info,
)

__all__ = [
    "TOKENIZER_BUILDERS",
    "PaddedBatch",
    "TokenizerInfo",
    "build_tokenizer",
    "encode",
    "load_tokenizer",
    "pad_batch",
    "tokenizer_info",
]
