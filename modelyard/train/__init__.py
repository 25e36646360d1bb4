"""The training station: ``train(config) -> Run``, checkpoints, resume, torch predictions.

This package imports torch; the serving side never imports it.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from modelyard.train.loop import Session, finish, fit, setup, train, validate
from modelyard.train.predict import load_model, predict_texts
from modelyard.train.run import Run, RunPaths, is_run_dir

__all__ = [
    "Run",
    "RunPaths",
    "Session",
    "finish",
    "fit",
    "is_run_dir",
    "load_model",
    "predict_texts",
    "setup",
    "train",
    "validate",
]


class _CallableModule(types.ModuleType):
    """``modelyard.train`` names both this package and the function ``train``.

    Importing the package binds the *module* to ``modelyard.train``, hiding the lazy function the
    top-level ``__getattr__`` would return; calling the module forwards to :func:`train`, so
    ``modelyard.train(config)`` works in either order.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Run:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
