"""The model server: Starlette routes, a dynamic batcher and the torch-free runtime.

>>> from modelyard.serve import serve
>>> serve("models", ServeConfig(port=8000))   # blocks; Ctrl-C drains and exits
"""

from __future__ import annotations

from modelyard.serve.app import create_app
from modelyard.serve.batcher import (
    BatcherClosedError,
    BatchInfo,
    DynamicBatcher,
    QueueFullError,
    RequestTimeoutError,
)
from modelyard.serve.repository import ModelRepository
from modelyard.serve.server import serve

__all__ = [
    "BatchInfo",
    "BatcherClosedError",
    "DynamicBatcher",
    "ModelRepository",
    "QueueFullError",
    "RequestTimeoutError",
    "create_app",
    "serve",
]
