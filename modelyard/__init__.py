"""modelyard: text models from raw data to a served, compressed, portable artifact.

The top-level names are imported lazily so that ``import modelyard.runtime`` (the serving side)
never pulls in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "modelyard.config",
    "load_config": "modelyard.config",
    "train": "modelyard.training",
    "Run": "modelyard.runs",
    "evaluate": "modelyard.training.evaluation",
    "export": "modelyard.exporters",
    "Bundle": "modelyard.bundle",
    "load": "modelyard.runtime",
    "Predictor": "modelyard.runtime",
    "Prediction": "modelyard.runtime",
    "serve": "modelyard.serving",
    "run_pipeline": "modelyard.pipeline",
    "tune": "modelyard.search",
    "choose": "modelyard.choice",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard' has no attribute {name!r}")
    return getattr(import_module(module), name)
