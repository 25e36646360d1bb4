"""What one model version does per batch, off the event loop: encode, infer, postprocess, and the
score rows the responses are shaped from. The repository decides *which* predictor runs; this
module decides what running it means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from modelyard.config import ServeConfig
from modelyard.errors import ConfigError
from modelyard.runtime import GeneratorSettings, load
from modelyard.runtime.backends import resolve_providers
from modelyard.tasks import get_task


class PredictorLike(Protocol):
    """What the server needs from a predictor (``modelyard.runtime.Predictor``)."""

    name: str
    version: int
    task: str
    labels: list[str]

    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...
    def infer(self, seqs: Sequence[Sequence[int]]) -> np.ndarray: ...
    def postprocess(self, scores: np.ndarray) -> Sequence[Any]: ...
    def warmup(self) -> None: ...


Loader = Callable[[Path], PredictorLike]


@dataclass
class TextResult:
    """One text's answer from a batch: its score row (label order) and its prediction."""

    scores: np.ndarray  # float32 (C,): class probabilities in label order; regression: (1,)
    prediction: Any  # modelyard.runtime.Prediction


def make_batch_fn(predictor: PredictorLike) -> Callable[[list[str]], list[TextResult]]:
    """The function the worker thread runs per batch: encode, infer, postprocess."""
    task = get_task(predictor.task)

    def run(texts: list[str]) -> list[TextResult]:
        # Tokenizing here (not in the request handler) keeps the event loop free for HTTP and
        # lets the tokenizer work on the whole batch at once.
        raw = predictor.infer(predictor.encode(texts))
        predictions = predictor.postprocess(raw)
        matrix = task.score_matrix(raw)
        return [TextResult(matrix[i], predictions[i]) for i in range(len(texts))]

    return run


def load_and_warm(loader: Loader, path: Path) -> PredictorLike:
    predictor = loader(path)
    predictor.warmup()
    return predictor


def default_loader(
    path: Path,
    intra_op_threads: int = 1,
    providers: str = "cpu",
    generation: GeneratorSettings | None = None,
) -> PredictorLike:
    """Load one version directory with the torch-free runtime.

    One ORT intra-op thread by default: each model has one worker thread feeding it whole
    batches, and ORT's own pool spin-waits on the cores the event loop needs to parse HTTP.
    ``providers`` is ``serve.providers`` (``cpu``, ``cuda``, ``auto``); ``generation`` starts a
    generative bundle's engine (a :class:`~modelyard.runtime.Generator`, served by its own queue).
    """
    predictor: Any = load(
        path,
        providers=providers,
        intra_op_threads=intra_op_threads,
        inter_op_threads=1,
        generation=generation,
    )
    return cast(PredictorLike, predictor)


def generator_settings(settings: ServeConfig) -> GeneratorSettings:
    """A generative bundle's engine settings from the ``serve:`` section."""
    return GeneratorSettings(
        slots=settings.generation_slots,
        threads=settings.generation_threads,
        context_length=settings.generation_context_length,
        prompt_cache_mib=settings.generation_prompt_cache_mib,
    )


def check_providers(providers: str) -> str:
    """Fail at start, not at the first load, when ``serve.providers`` cannot run here.

    Returns:
        ``providers``, unchanged.

    Raises:
        ConfigError: ``cuda`` asked for and this onnxruntime build has no CUDA provider.
    """
    try:
        resolve_providers(providers)
    except ConfigError as exc:
        raise ConfigError(
            f"serve.providers: {providers!r} cannot run here ({exc}); install onnxruntime-gpu "
            "with CUDA, or use 'cpu' / 'auto'"
        ) from None
    return providers
