"""Inference backends: a graph file in, ``(ids, mask) -> raw outputs`` out.

``BACKENDS`` maps a bundle's ``format`` to the class that runs it, so a LiteRT backend for
``model.tflite`` slots in beside ONNX Runtime without touching the predictor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from modelyard.errors import BundleError, ConfigError
from modelyard.runtime.litert import LiteRTBackend
from modelyard.runtime.llama_cpp import LlamaCppGenerator

Providers = str | Sequence[str] | None


class Backend(Protocol):
    """What the predictor needs from a backend."""

    providers: list[str]

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Raw model outputs (B, num_outputs) float32 for padded ids and mask (B, T) int64."""
        ...


def resolve_providers(providers: Providers) -> list[str]:
    """Turn the user's provider choice into an ONNX Runtime provider list.

    Args:
        providers: ``None`` or ``"cpu"`` (CPU only), ``"auto"`` (CUDA first when this
            onnxruntime build has it, then CPU), ``"cuda"``, or an explicit provider list.

    Returns:
        Provider names, in priority order, ending with the CPU provider as a fallback.

    Raises:
        ConfigError: a named provider is not available in this onnxruntime build.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None or providers == "cpu":
        return ["CPUExecutionProvider"]
    if providers == "auto":
        wanted = [p for p in ("CUDAExecutionProvider",) if p in available]
        return [*wanted, "CPUExecutionProvider"]
    if isinstance(providers, str):
        names = ["CUDAExecutionProvider"] if providers == "cuda" else [providers]
    else:
        names = list(providers)
    missing = [p for p in names if p not in available]
    if missing:
        raise ConfigError(
            f"execution provider(s) {', '.join(missing)} not available; "
            f"this onnxruntime has: {', '.join(available)}"
        )
    return names if "CPUExecutionProvider" in names else [*names, "CPUExecutionProvider"]


class ONNXBackend:
    """An ONNX Runtime session over ``model.onnx``.

    Args:
        model_path: the graph file.
        input_names: names of the ids and mask inputs, in that order.
        providers: see :func:`resolve_providers`.
        intra_op_threads: threads inside one operator (ORT default: one per core).
        inter_op_threads: threads across independent operators.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        input_names: Sequence[str] = ("input_ids", "attention_mask"),
        providers: Providers = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        pad_id: int = 0,
        padding_side: str | None = None,
    ) -> None:
        # pad_id / padding_side matter only to static-shape backends (LiteRT); an ONNX graph
        # with dynamic axes takes the batch as the predictor padded it.
        del pad_id, padding_side
        import onnxruntime as ort

        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=resolve_providers(providers)
            )
        except ConfigError:
            raise
        except Exception as exc:  # ORT raises its own types for a graph it cannot read
            raise BundleError(f"{model_path}: ONNX Runtime cannot load the model ({exc})") from None
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if sorted(graph_inputs) != sorted(input_names):
            raise BundleError(
                f"{model_path}: graph inputs {graph_inputs} do not match the manifest's "
                f"{list(input_names)}"
            )
        self.input_names = list(input_names)
        self.providers: list[str] = self.session.get_providers()

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Raw outputs (B, num_outputs) float32 for ids and mask (B, T) int64."""
        feeds = {self.input_names[0]: ids, self.input_names[1]: mask}
        (out,) = self.session.run(None, feeds)[:1]
        return np.asarray(out, dtype=np.float32)


# bundle format (config.EXPORT_FORMATS: tests/test_registries.py) -> backend class
BACKENDS: dict[str, Callable[..., Backend]] = {
    "onnx": ONNXBackend,
    "tflite": LiteRTBackend,
    "gguf": LlamaCppGenerator,  # type: ignore[dict-item]  # a generator: load() takes it first
}
