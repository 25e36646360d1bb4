"""The serving-side runtime: load a bundle and predict from raw text, without torch.

>>> predictor = load("models/sentiment")  # the latest version; load(path, version=2) for another
>>> predictor.predict(["a lovely film"])[0].label
>>> load("models/assistant").generate("Once upon a time", GenerationParams(max_tokens=16)).text
"""

from __future__ import annotations

from modelyard.bundle import Bundle, Manifest, verify_bundle
from modelyard.runtime.backends import BACKENDS, ONNXBackend
from modelyard.runtime.bundle_metrics import evaluate_bundle
from modelyard.runtime.generation_params import GenerationParams, ParamError
from modelyard.runtime.generator import GenerationChunk, Generator, GeneratorSettings
from modelyard.runtime.predictor import Prediction, Predictor, load, load_predictor
from modelyard.versions import list_versions

__all__ = [
    "BACKENDS",
    "Bundle",
    "GenerationChunk",
    "GenerationParams",
    "Generator",
    "GeneratorSettings",
    "Manifest",
    "ONNXBackend",
    "ParamError",
    "Prediction",
    "Predictor",
    "evaluate_bundle",
    "list_versions",
    "load",
    "load_predictor",
    "verify_bundle",
]
