"""Weight clipping: cap outlier weights so 8-bit quantization spends its range on the bulk.

A tensor quantized to int8 gets ``2 * max|w| / 255`` per step; one weight far out in the tail
makes every step coarse. Clipping the tail first (to a fixed value, or to a percentile of the
tensor's ``|w|``) trades a small error on a few weights for finer steps on all the others.

Clipping works on the ONNX graph (after ``quant_pre_process`` has folded the weights into plain
initializers), so it serves a run and an already exported bundle alike. Only weights are
clipped — the initializers a Gather, MatMul, Gemm, Conv or recurrent node reads as its weight —
never biases, norms or constants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from modelyard.errors import ConfigError

# op type -> input positions that hold a weight matrix
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Gather": (0,),
    "MatMul": (0, 1),
    "Gemm": (0, 1),
    "Conv": (1,),
    "LSTM": (1, 2),
    "GRU": (1, 2),
    "RNN": (1, 2),
}
_PERCENTILE = re.compile(r"^\s*(?:p\s*([0-9.]+)|([0-9.]+)\s*%)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ClipSpec:
    """How to clip: to ``±amount`` (``value``) or to the ``amount`` percentile of ``|w|``."""

    kind: str  # "value" | "percentile"
    amount: float

    @property
    def name(self) -> str:
        """The short name used in variant names: ``clip3`` or ``clip-p99.9``."""
        if self.kind == "percentile":
            return f"clip-p{self.amount:g}"
        return f"clip{self.amount:g}"


@dataclass
class ClipReport:
    """What clipping changed."""

    spec: ClipSpec
    clipped: int = 0  # weights changed
    total: int = 0  # weights looked at
    tensors: dict[str, float] = field(default_factory=dict)  # name -> threshold used

    @property
    def fraction(self) -> float:
        return self.clipped / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest's ``variant``."""
        return {
            "kind": self.spec.kind,
            "amount": self.spec.amount,
            "clipped": self.clipped,
            "total": self.total,
            "fraction": self.fraction,
        }


def parse_clip(value: float | str) -> ClipSpec:
    """Read a clip setting.

    Args:
        value: a number (clip every weight to ``±value``), or a percentile written ``"p99.9"``
            or ``"99.9%"`` (clip each tensor to that percentile of its ``|w|``); a numeric
            string is a value.

    Returns:
        The :class:`ClipSpec`.

    Raises:
        ConfigError: not positive, a percentile outside (0, 100], or unreadable.
    """
    if isinstance(value, str):
        match = _PERCENTILE.match(value)
        if match:
            pct = float(match.group(1) or match.group(2))
            if not 0 < pct <= 100:
                raise ConfigError(f"compress.clip: percentile must be in (0, 100], got {value!r}")
            return ClipSpec("percentile", pct)
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(
                f"compress.clip: expected a value like 3.0 or a percentile like p99.9, "
                f"got {value!r}"
            ) from None
    if isinstance(value, bool) or not float(value) > 0:
        raise ConfigError(f"compress.clip: must be > 0, got {value!r}")
    return ClipSpec("value", float(value))


def weight_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of the float initializers (2-D or more) that nodes read as weights, in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        for pos in WEIGHT_INPUTS.get(node.op_type, ()):
            if pos >= len(node.input):
                continue
            tensor = inits.get(node.input[pos])
            if (
                tensor is not None
                and tensor.data_type == onnx.TensorProto.FLOAT
                and len(tensor.dims) >= 2
                and tensor.name not in names
            ):
                names.append(tensor.name)
    return names


def clip_weights(model: onnx.ModelProto, spec: ClipSpec) -> ClipReport:
    """Clip the weights of ``model`` in place.

    Args:
        model: the graph (run ``quant_pre_process`` first so recurrent weights are initializers).
        spec: from :func:`parse_clip`.

    Returns:
        A :class:`ClipReport`: how many weights changed, out of how many.
    """
    report = ClipReport(spec)
    wanted = set(weight_initializers(model))
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name not in wanted:
            continue
        w = numpy_helper.to_array(tensor)
        if spec.kind == "percentile":
            limit = float(np.percentile(np.abs(w), spec.amount))
        else:
            limit = spec.amount
        over = np.abs(w) > limit
        report.total += w.size
        report.tensors[tensor.name] = limit
        if over.any():
            report.clipped += int(over.sum())
            clipped = np.clip(w, -limit, limit).astype(w.dtype)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(clipped, tensor.name))
    return report
