"""The data station (torch-free): read files (labelled texts; chat, prompt/completion and plain
text records for causal LMs), fit label spaces, split, bucket batches.

Cleaning (unicode normalisation, lowercase, HTML stripping) is not done here: it is part of the
tokenizer's normalizer, so the runtime applies exactly the same steps.
"""

from __future__ import annotations

from modelyard.data.batching import bucket_batches
from modelyard.data.chat import (
    RECORD_FORMATS,
    ROLES,
    Conversation,
    GenerationInput,
    read_conversations,
    read_generation_inputs,
)
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
from modelyard.data.splits import (
    DataSplits,
    Examples,
    IndexSplit,
    load_splits,
    random_split,
    split_indices,
)

__all__ = [
    "DEFAULT_DELIMITER",
    "FORMATS",
    "RECORD_FORMATS",
    "ROLES",
    "BadRow",
    "Conversation",
    "DataSplits",
    "Examples",
    "GenerationInput",
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
    "random_split",
    "read_conversations",
    "read_generation_inputs",
    "read_table",
    "split_indices",
]
