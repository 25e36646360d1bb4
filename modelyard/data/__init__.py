"""The data station (torch-free): read files, fit label spaces, split, bucket batches.

Cleaning (unicode normalisation, lowercase, HTML stripping) is not done here: it is part of the
tokenizer's normalizer, so the runtime applies exactly the same steps.
"""

from __future__ import annotations

from modelyard.data.batching import bucket_batches
from modelyard.data.labels import DEFAULT_DELIMITER, LabelProblem, LabelSpace, parse_label
from modelyard.data.readers import (
    FORMATS,
    BadRow,
    Record,
    TextTable,
    detect_format,
    iter_records,
    read_table,
)
from modelyard.data.splits import DataSplits, Examples, IndexSplit, load_splits, split_indices

__all__ = [
    "DEFAULT_DELIMITER",
    "FORMATS",
    "BadRow",
    "DataSplits",
    "Examples",
    "IndexSplit",
    "LabelProblem",
    "LabelSpace",
    "Record",
    "TextTable",
    "bucket_batches",
    "detect_format",
    "iter_records",
    "load_splits",
    "parse_label",
    "read_table",
    "split_indices",
]
