"""Compression: pruned, clipped and quantized variants of a model, each a measured bundle.

>>> measured = compress("runs/sentiment", prune=0.5, quantize=["int8-dynamic", "int8-static"])
>>> print(format_table(measured))

Quantization runs in ONNX Runtime on the exported graph (dynamic int8, static int8 in QDQ,
fp16); pruning runs in torch before export. The torch parts (:mod:`.prune`) are imported only
when a variant needs them, so quantizing an existing bundle does not need torch (ONNX Runtime's
own pre-processing tools import it when it happens to be installed).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from modelyard.compress.clip import ClipReport, ClipSpec, clip_weights, parse_clip
from modelyard.compress.formats import FORMAT_VARIANTS, FormatRequest, wanted_formats
from modelyard.compress.quantize import QUANTIZERS, CalibrationData, preprocess
from modelyard.compress.sources import eval_data, is_plain_fp32
from modelyard.compress.variants import PRUNE_KINDS, compress
from modelyard.measure import Measurement, format_table, measure_bundle

_LAZY = {
    "PRUNERS": "modelyard.compress.prune",
    "PruneReport": "modelyard.compress.prune",
    "PruneResult": "modelyard.compress.prune",
    "finetune": "modelyard.compress.prune",
    "prune_model": "modelyard.compress.prune",
}

__all__ = [
    "FORMAT_VARIANTS",
    "PRUNERS",
    "PRUNE_KINDS",
    "QUANTIZERS",
    "CalibrationData",
    "ClipReport",
    "ClipSpec",
    "FormatRequest",
    "Measurement",
    "PruneReport",
    "PruneResult",
    "clip_weights",
    "compress",
    "eval_data",
    "finetune",
    "format_table",
    "is_plain_fp32",
    "measure_bundle",
    "parse_clip",
    "preprocess",
    "prune_model",
    "wanted_formats",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard.compress' has no attribute {name!r}")
    return getattr(import_module(module), name)
