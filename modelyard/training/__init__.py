"""The training station: ``train(config) -> Run``, checkpoints, resume, torch predictions.

The steps of :func:`train` are importable one by one: :func:`setup` (:mod:`.prepare`),
:func:`fit` and :func:`validate` (:mod:`.epochs`), :func:`finish` (:mod:`.recipe`). This package
imports torch; the serving side never imports it.
"""

from __future__ import annotations

from modelyard.runs import Run, RunPaths, is_run_dir
from modelyard.training.epochs import fit, validate
from modelyard.training.evaluation import EvalResult, evaluate, evaluate_examples
from modelyard.training.predict import load_model, predict_texts
from modelyard.training.prepare import setup
from modelyard.training.recipe import finish, train
from modelyard.training.state import Hooks, Session

__all__ = [
    "EvalResult",
    "Hooks",
    "Run",
    "RunPaths",
    "Session",
    "evaluate",
    "evaluate_examples",
    "finish",
    "fit",
    "is_run_dir",
    "load_model",
    "predict_texts",
    "setup",
    "train",
    "validate",
]
