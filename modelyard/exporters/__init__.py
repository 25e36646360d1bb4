"""Export: a trained run becomes a versioned, verified bundle (ONNX, or LiteRT for mobile); a
generative run becomes a merged Hugging Face directory or a GGUF file (``gguf.py``).

The bundle format itself is :mod:`modelyard.bundle`, which the torch-free serving side reads.
"""

from __future__ import annotations

from modelyard.exporters.onnx import export_onnx
from modelyard.exporters.registry import EXPORTERS, export, export_gguf, export_merged
from modelyard.exporters.tflite import export_tflite

__all__ = ["EXPORTERS", "export", "export_gguf", "export_merged", "export_onnx", "export_tflite"]
