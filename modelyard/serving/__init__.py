"""The model server: Starlette routes, a dynamic batcher and the torch-free runtime.

>>> from modelyard.serving import serve
>>> serve("models", ServeConfig(port=8000))   # blocks; Ctrl-C drains and exits
"""

from __future__ import annotations

from modelyard.serving.app import create_app
from modelyard.serving.batcher import (
    BatcherClosedError,
    BatchInfo,
    DynamicBatcher,
    QueueFullError,
    RequestTimeoutError,
)
from modelyard.serving.repository import ModelRepository
from modelyard.serving.server import serve

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
