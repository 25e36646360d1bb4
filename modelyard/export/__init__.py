"""Export: a trained run becomes a versioned, verified bundle.

``export`` (the torch side) is imported lazily so that ``modelyard.export.bundle`` — the bundle
format the torch-free runtime and server read — never pulls in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from modelyard.callable_module import make_module_callable
from modelyard.export.bundle import (
    SCHEMA_VERSION,
    Bundle,
    Manifest,
    list_versions,
    verify_bundle,
    write_bundle,
)

_LAZY = {"export": "modelyard.export.onnx", "EXPORTERS": "modelyard.export.onnx"}

__all__ = [
    "EXPORTERS",
    "SCHEMA_VERSION",
    "Bundle",
    "Manifest",
    "export",
    "list_versions",
    "verify_bundle",
    "write_bundle",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard.export' has no attribute {name!r}")
    return getattr(import_module(module), name)


def _export(*args: Any, **kwargs: Any) -> Any:
    return __getattr__("export")(*args, **kwargs)


make_module_callable(__name__, _export)
