"""Export: a trained run becomes a versioned, verified bundle (ONNX, or LiteRT for mobile).

The bundle format itself is :mod:`modelyard.bundle`, which the torch-free serving side reads.
"""

from __future__ import annotations

from modelyard.exporters.onnx import export_onnx
from modelyard.exporters.registry import EXPORTERS, export, export_merged
from modelyard.exporters.tflite import export_tflite

__all__ = ["EXPORTERS", "export", "export_merged", "export_onnx", "export_tflite"]
