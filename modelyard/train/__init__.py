"""The training station: ``train(config) -> Run``, checkpoints, resume, torch predictions.

This package imports torch; the serving side never imports it.
"""

from __future__ import annotations

from modelyard.callable_module import make_module_callable
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


make_module_callable(__name__, train)
