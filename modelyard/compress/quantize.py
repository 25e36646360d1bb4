"""Quantization in ONNX Runtime: dynamic int8, static int8 (QDQ) and fp16.

Every mode starts from a graph that ``quant_pre_process`` has prepared: shape inference plus
ORT's graph optimizations, which fold the exporter's Slice/Concat chains in front of an LSTM
into plain weight initializers. Without that step the LSTM weights are not initializers and
the quantizer leaves them in float.

- ``int8-dynamic``: int8 weights (per channel), activations quantized on the fly at run time.
  ``Gather`` is quantized too: the embedding table is most of a text model's bytes. A transformer
  encoder's graph first goes through ONNX Runtime's transformer optimizer
  (:func:`fuse_transformer`: residual + LayerNorm into ``SkipLayerNormalization``, bias + GELU
  into ``BiasGelu``), so the int8 graph runs fused kernels.
- ``int8-static``: QDQ format, int8 weights (per channel) and uint8 activations whose ranges
  were calibrated on real training texts, padded per small batch like the runtime pads them.
- ``fp16``: every float weight and op in half precision, with the graph's inputs (int64 ids)
  and output (float32 logits) kept in their types.

The graph's inputs and outputs keep the bundle's dtypes in every mode, so the runtime and the
manifest need no change. ``torch.ao`` is not used: it is being removed, and its quantized LSTMs
do not export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from modelyard.errors import BundleError, ConfigError
from modelyard.staging import staging_dir

log = logging.getLogger("modelyard.compress")

# op types each int8 mode quantizes. ORT has no dynamic int8 GRU (its weights stay float there);
# its dynamic ConvInteger kernel takes only uint8 weights, so Conv is left to the static mode.
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather", "LSTM", "Attention")
STATIC_OPS = ("MatMul", "Gemm", "Gather", "Conv", "LSTM", "GRU")
CALIBRATION_BATCH = 16
_MAX_FP16_RETRIES = 8
_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(")


@dataclass
class CalibrationData:
    """Padded batches of real texts, as graph feeds, for static calibration."""

    batches: list[dict[str, np.ndarray]]

    @classmethod
    def from_sequences(
        cls,
        seqs: Sequence[Sequence[int]],
        *,
        pad_id: int,
        side: str,
        input_names: Sequence[str] = ("input_ids", "attention_mask"),
        batch_size: int = CALIBRATION_BATCH,
    ) -> CalibrationData:
        """Pad token id sequences in batches of ``batch_size``, each to its own longest.

        Args:
            seqs: token ids of real texts (truncated, unpadded).
            pad_id: the bundle's padding id.
            side: the bundle's padding side.
            input_names: the graph's ids and mask input names.
            batch_size: texts per calibration batch.

        Returns:
            The calibration feeds.
        """
        from modelyard.tokenize import pad_batch

        batches = []
        pad_side: Literal["left", "right"] = "left" if side == "left" else "right"
        for start in range(0, len(seqs), batch_size):
            batch = pad_batch([list(s) for s in seqs[start : start + batch_size]], pad_id=pad_id,
                              side=pad_side)  # fmt: skip
            batches.append({input_names[0]: batch.ids, input_names[1]: batch.mask})
        return cls(batches)


def _reader(data: CalibrationData) -> Any:
    """An ORT ``CalibrationDataReader`` over the batches (built here: ORT is imported lazily)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(data.batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return _Reader()


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Silence ORT's quantization tools while they run.

    They log advice to the root logger at WARNING ("consider pre-processing", "failed to infer
    the type of tensor" for optional empty inputs) and raise Python warnings about their own
    internals; none of it is actionable for a user, and a real failure still raises.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def preprocess(source: Path, target: Path) -> None:
    """Run ``quant_pre_process`` (shape inference + ORT optimizations) on a graph.

    Symbolic shape inference fails on some graphs; the step is then retried without it (ONNX
    shape inference still runs), which is enough for these models' weights to be folded.

    Raises:
        BundleError: the graph cannot be prepared at all.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = source.resolve(), target.resolve()
    # scratch beside the output (inside compress's own staging directory when it runs there)
    with quiet_ort(), staging_dir(target.parent) as scratch:
        try:
            with _working_directory(scratch):
                quant_pre_process(str(source), str(target))
        except Exception:  # symbolic shape inference raises many types; retry without it
            try:
                quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
            except Exception as exc:
                raise BundleError(f"{source}: quantization pre-processing failed: {exc}") from exc


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run with ``path`` as the working directory.

    When symbolic shape inference is incomplete (it is on BERT graphs), ORT saves the graph it
    got to ``./sym_shape_infer_temp.onnx`` plus a weights file before raising; in a scratch
    directory those go away instead of piling up wherever the user ran ``compress``. The working
    directory is process-wide, so this is only for the offline compress path.
    """
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def output_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that produce a graph output."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if outputs.intersection(n.output)]


def weights_by_dtype(model: onnx.ModelProto) -> dict[str, int]:
    """How many initializer elements are stored in each data type (e.g. ``{"int8": 1.3e6}``)."""
    counts: dict[str, int] = {}
    for tensor in model.graph.initializer:
        size = int(np.prod(tensor.dims)) if tensor.dims else 1
        name = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        counts[name] = counts.get(name, 0) + size
    return counts


def _present(model: onnx.ModelProto, ops: Sequence[str]) -> list[str]:
    have = {n.op_type for n in model.graph.node}
    return [op for op in ops if op in have]


def fuse_transformer(source: Path, target: Path) -> dict[str, int]:
    """Fuse a transformer encoder's subgraphs with ONNX Runtime's transformer optimizer.

    ``model_type="bert"`` with the heads and width read from the graph, python fusions only
    (``opt_level=0``: the graph was already optimized by :func:`preprocess`). On the graphs the
    dynamo exporter writes for BERT-family encoders it fuses every residual + LayerNorm and
    bias + GELU; attention stays unfused (its mask subgraph matches none of ORT's patterns).

    Returns:
        Fused operator counts (``{"SkipLayerNormalization": 12, ...}``); empty, with nothing
        written, when no pattern matched (a recurrent or convolutional model).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet_ort(), contextlib.redirect_stdout(io.StringIO()):
        optimized = optimize_model(
            str(source), model_type="bert", num_heads=0, hidden_size=0, opt_level=0
        )
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        # a lone LayerNormalization is the exporter's own op, counted, not fused
        stats.pop("LayerNormalization", None)
        if stats:
            optimized.save_model_to_file(str(target))
    return stats


def quantize_dynamic_int8(
    source: Path, target: Path, *, calibration: CalibrationData | None = None
) -> dict[str, Any]:
    """Dynamic int8: int8 weights per channel, activations quantized at run time.

    Args:
        source: a pre-processed graph (:func:`preprocess`).
        target: where the quantized graph goes.
        calibration: unused (dynamic quantization needs no data).

    Returns:
        What was done, for the manifest's ``variant.quantization``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused_graph = target.with_name(target.stem + ".fused.onnx")
    fusions = fuse_transformer(source, fused_graph)
    if fusions:
        source = fused_graph
    model = onnx.load(str(source))
    ops = _present(model, DYNAMIC_OPS)
    with quiet_ort():
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=ops,
            per_channel=True,
            weight_type=QuantType.QInt8,
            # the graph output stays float: quantizing the head would only cost precision
            nodes_to_exclude=output_nodes(model),
        )
    return {
        "mode": "int8-dynamic",
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "fusions": fusions,  # onnxruntime.transformers.optimizer, before quantizing
        "weight_type": "int8",
        "activations": "uint8, computed at run time",
        "per_channel": True,
        "op_types": ops,
        "not_quantized": _present(model, ("GRU", "Conv")),
        "weights_by_dtype": weights_by_dtype(onnx.load(str(target))),
    }


def quantize_static_int8(
    source: Path, target: Path, *, calibration: CalibrationData | None = None
) -> dict[str, Any]:
    """Static int8 in QDQ format, activation ranges calibrated (min/max) on real texts.

    Args:
        source: a pre-processed graph (:func:`preprocess`).
        target: where the quantized graph goes.
        calibration: padded batches of training texts (required).

    Returns:
        What was done, for the manifest's ``variant.quantization``.

    Raises:
        ConfigError: no calibration data.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration is None or not calibration.batches:
        raise ConfigError("int8-static needs calibration texts (a sample of the training data)")
    model = onnx.load(str(source))
    ops = _present(model, STATIC_OPS)
    with quiet_ort():
        quantize_static(
            str(source),
            str(target),
            _reader(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=ops,
            nodes_to_exclude=output_nodes(model),
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "mode": "int8-static",
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weight_type": "int8",
        "activation_type": "uint8",
        "per_channel": True,
        "calibration": {
            "method": "minmax",
            "batches": len(calibration.batches),
            "texts": sum(len(b[next(iter(b))]) for b in calibration.batches),
        },
        "op_types": ops,
        "weights_by_dtype": weights_by_dtype(onnx.load(str(target))),
    }


def convert_fp16(
    source: Path, target: Path, *, calibration: CalibrationData | None = None
) -> dict[str, Any]:
    """Half precision, inputs and outputs kept in their types (``keep_io_types``).

    An op ONNX Runtime's CPU build has no fp16 kernel for is kept in float32 (Casts around it):
    the converted graph is loaded, and each missing kernel it reports is blocked and the
    conversion redone.

    Args:
        source: a pre-processed graph (:func:`preprocess`).
        target: where the converted graph goes.
        calibration: unused.

    Returns:
        What was done, for the manifest's ``variant.quantization``.

    Raises:
        BundleError: the converted graph still cannot be loaded.
    """
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked: list[str] = []
    for _ in range(_MAX_FP16_RETRIES):
        with quiet_ort():
            half = convert_float_to_float16(
                onnx.load(str(source)),
                keep_io_types=True,
                op_block_list=[*DEFAULT_OP_BLOCK_LIST, *blocked],
            )
        onnx.save(half, str(target))
        try:
            ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            break
        except Exception as exc:  # ORT's own error types
            missing = _MISSING_KERNEL.search(str(exc))
            if missing is None or missing.group(1) in blocked:
                raise BundleError(f"fp16 graph cannot be loaded by ONNX Runtime: {exc}") from None
            blocked.append(missing.group(1))
    else:
        raise BundleError(f"fp16 conversion: still missing CPU kernels after blocking {blocked}")
    return {
        "mode": "fp16",
        "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True,
        "kept_in_float32": blocked,
        "weights_by_dtype": weights_by_dtype(half),
    }


Quantizer = Callable[..., dict[str, Any]]

# quantization mode (config.QUANTIZE_MODES: tests/test_registries.py) ->
# function(source, target, *, calibration) -> details for the manifest
QUANTIZERS: dict[str, Quantizer] = {
    "int8-dynamic": quantize_dynamic_int8,
    "int8-static": quantize_static_int8,
    "fp16": convert_fp16,
}


def check_modes(modes: Sequence[str]) -> list[str]:
    """The quantization modes, in order without repeats.

    Raises:
        ConfigError: an unknown mode.
    """
    unknown = [m for m in modes if m not in QUANTIZERS]
    if unknown:
        raise ConfigError(
            f"compress.quantize: unknown mode(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(QUANTIZERS)}"
        )
    return list(dict.fromkeys(modes))
