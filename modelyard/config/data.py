"""Where the examples come from and how text becomes ids: ``data:`` and ``tokenizer:``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelyard.config.base import StrictModel


class CleanConfig(StrictModel):
    """Optional text cleaning applied before tokenization (and again by the runtime)."""

    unicode: Literal["none", "NFC", "NFKC"] = "none"
    lowercase: bool = False
    strip_html: bool = False


class DataConfig(StrictModel):
    """Where the examples come from and which columns hold text and target."""

    train: str
    validation: str | None = None
    test: str | None = None
    text: str = "text"
    label: str = "label"
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    encoding: str = "utf-8"
    validation_split: float = Field(0.1, ge=0.0, lt=1.0)
    labels: list[str] | None = None  # fixed class order; default: sorted as found
    label_delimiter: str | None = None  # multilabel labels given as "a|b|c"
    skip_bad_rows: bool = False
    clean: CleanConfig = CleanConfig()
    # causal LMs: the loss on the assistant turns only (``completion``) or on every token
    # (``all``); plain-text records always learn every token
    train_on: Literal["completion", "all"] = "completion"


# ---------------------------------------------------------------------------------- tokenizer
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


class TokenizerConfig(StrictModel):
    """How text becomes ids. Every kind is saved as one HF ``tokenizer.json``.

    ``padding_side`` / ``truncation_side`` default to ``right``: our models mask padding, so the
    side does not change a prediction, and keeping the beginning of a long text is what most
    readers (and pretrained encoders) expect. Keras pads and truncates at the front (``left``);
    ``examples/seed.yaml`` sets that to reproduce the recipe exactly.
    """

    kind: Literal["word", "bpe", "wordpiece", "char", "pretrained"] = "word"
    num_words: int = Field(10000, ge=3)  # word: keep the num_words-1 most frequent ids, 0 = pad
    vocab_size: int = Field(8000, ge=50)  # bpe / wordpiece; char: the most characters kept
    min_frequency: int = Field(1, ge=1)
    oov_token: str = "<OOV>"
    pad_token: str = "<PAD>"
    lowercase: bool = True
    filters: str = KERAS_FILTERS  # word: characters removed, as Keras' Tokenizer(filters=...)
    max_length: int = Field(100, ge=1, le=8192)
    padding_side: Literal["left", "right"] = "right"
    truncation_side: Literal["left", "right"] = "right"
    path: str | None = None  # pretrained: a model directory holding tokenizer.json, or package:NAME
