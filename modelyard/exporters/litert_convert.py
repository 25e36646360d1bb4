"""torch → ``.tflite`` with litert-torch, and int8 quantization with ai-edge-quantizer.

Both are optional (the ``mobile`` extra) and imported when a conversion runs. The converted
model has *static* ``(batch_size, max_length)`` int32 inputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from modelyard.errors import BundleError
from modelyard.exporters.manifest import INPUT_NAMES, OUTPUT_NAME
from modelyard.logs import quiet_logger


class StaticShapeModel(torch.nn.Module):
    """The model behind a fixed ``(batch, max_length)`` int32 signature, returning ``logits``.

    LiteRT runtimes take int32 far more widely than int64, and the torch models expect
    LongTensors, so the ids are widened inside the graph; a dict output names the signature's
    output tensor.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        return {OUTPUT_NAME: self.model(input_ids.long(), attention_mask.long())}


def convert(model: torch.nn.Module, path: Path, *, batch_size: int, max_length: int) -> float:
    """Convert ``model`` to an fp32 ``.tflite`` file with static (batch_size, max_length) inputs.

    RNNs are unrolled over ``max_length`` steps (litert-torch has no recurrent op for them), so
    their conversion time and op count grow with ``max_length`` times layers and directions.

    Returns:
        The conversion time in seconds.

    Raises:
        BundleError: litert-torch is not installed or fails on the model.
    """
    try:
        with _quiet_converter():
            import litert_torch
    except ImportError as exc:
        raise BundleError(
            f"TFLite export needs litert-torch (pip install 'modelyard[mobile]'): {exc}"
        ) from None
    example = _example_inputs(batch_size, max_length)
    model.eval()
    # as in the ONNX exporter: a cached dynamo trace of an RNN loop can carry another shape
    torch._dynamo.reset()
    start = time.perf_counter()
    with _quiet_converter(), torch.no_grad():
        try:
            edge = litert_torch.convert(StaticShapeModel(model).eval(), sample_kwargs=example)
            edge.export(str(path))
        except Exception as exc:  # the converter raises many internal error types
            raise BundleError(f"TFLite conversion failed: {type(exc).__name__}: {exc}") from exc
    return time.perf_counter() - start


def quantize_int8_dynamic(path: Path) -> None:
    """Quantize a converted ``.tflite`` in place: int8 weights, activations int8 on the fly.

    Uses ``ai_edge_quantizer``'s ``dynamic_wi8_afp32`` recipe (channel-wise int8 weights for
    fully connected, convolution, batch matmul and embedding lookup ops; other ops stay fp32).

    Raises:
        BundleError: the quantizer fails.
    """
    with _quiet_converter():
        from ai_edge_quantizer import quantizer, recipe

        try:
            q = quantizer.Quantizer(str(path), recipe.dynamic_wi8_afp32())
            result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
        except Exception as exc:  # the quantizer raises many internal error types
            raise BundleError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    if result.quantized_model is None:
        raise BundleError("int8 quantization produced no model")
    path.write_bytes(bytes(result.quantized_model))


def _example_inputs(batch_size: int, max_length: int) -> dict[str, torch.Tensor]:
    """Padded int32 example inputs: the shapes are static, so the values only need to be valid."""
    ids = torch.ones((batch_size, max_length), dtype=torch.int32)
    mask = torch.ones_like(ids)
    mask[:, max(1, max_length // 2) :] = 0
    return {INPUT_NAMES[0]: ids * mask, INPUT_NAMES[1]: mask}


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Silence litert-torch's progress lines, Python warnings and chatty loggers while converting.

    None of it is actionable for a user and a real failure still raises. (The converter's C++
    side also logs to stderr; that cannot be captured from Python.)
    """
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),  # the quantizer's tqdm bars
        quiet_logger("torch"),
        quiet_logger("absl"),
        quiet_logger("torchao"),
        _progress_off(),
    ):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _progress_off() -> Iterator[None]:
    """litert-torch prints progress lines unless ``LITERT_TORCH_SHOW_PROGRESS`` says no."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


# the modes config.EXPORT_QUANTIZE_MODES["tflite"] names (tests/test_registries.py)
TFLITE_QUANTIZERS: dict[str, Callable[[Path], None]] = {"int8-dynamic": quantize_int8_dynamic}
