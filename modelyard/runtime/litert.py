"""The LiteRT backend: runs a bundle's ``model.tflite`` with ``ai_edge_litert``, without torch.

A LiteRT model here has static input shapes, ``(batch, max_length)``, fixed when it was
exported. The predictor hands over batches padded only to their own longest text, of any size,
so :meth:`LiteRTBackend.run` pads every row out to ``max_length`` and cuts the batch into
chunks of the static batch size (the last chunk filled with copies of a real row, whose outputs
are dropped). Our models mask padding, so neither changes a text's score. Inputs are cast to the
graph's integer type (the converter turns int64 ids into int32).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modelyard.errors import BundleError, ConfigError

SIGNATURE = "serving_default"
PROVIDER = "LiteRT-CPU"
# what ONNX Runtime callers pass for "the CPU"; LiteRT accepts it as the same request
_CPU_NAMES = frozenset({PROVIDER, "CPUExecutionProvider"})


class LiteRTBackend:
    """A LiteRT interpreter over ``model.tflite``, with the same ``run`` as the ONNX backend.

    Args:
        model_path: the ``.tflite`` file.
        input_names: names of the ids and mask inputs, in that order.
        providers: only ``None`` or ``"cpu"`` (LiteRT runs on the CPU here; accelerator
            delegates are not wired in).
        intra_op_threads: interpreter threads (default: LiteRT's choice).
        inter_op_threads: accepted for the common backend signature; LiteRT has no such pool.
        pad_id: the id written into padding positions.
        padding_side: where rows are padded out to the static length; ``None`` keeps the side
            the incoming batch is padded on.

    Raises:
        BundleError: the file is not a LiteRT model, its inputs do not match ``input_names``,
            or an input is not a static ``(batch, length)`` integer tensor.
        ConfigError: an accelerator was asked for.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        input_names: Sequence[str] = ("input_ids", "attention_mask"),
        providers: str | Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        pad_id: int = 0,
        padding_side: Literal["left", "right"] | None = None,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if not _cpu_only(providers):
            raise ConfigError(
                f"the LiteRT backend runs on the CPU only; providers={providers!r} is not supported"
            )
        del inter_op_threads  # LiteRT parallelises inside operators only
        try:
            interpreter = Interpreter(model_path=str(model_path), num_threads=intra_op_threads)
            self._runner = interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{model_path}: LiteRT cannot load the model ({exc})") from None
        self._interpreter = interpreter  # the runner keeps no reference of its own
        details: dict[str, Any] = self._runner.get_input_details()
        if sorted(details) != sorted(input_names):
            raise BundleError(
                f"{model_path}: model inputs {sorted(details)} do not match the manifest's "
                f"{list(input_names)}"
            )
        shapes = {tuple(int(n) for n in d["shape_signature"]) for d in details.values()}
        shape = shapes.pop() if len(shapes) == 1 else ()
        if len(shape) != 2 or min(shape) < 1:
            raise BundleError(
                f"{model_path}: expected static (batch, length) inputs, got "
                f"{ {k: d['shape_signature'].tolist() for k, d in details.items()} }"
            )
        self.input_names = list(input_names)
        self.batch_size, self.max_length = shape
        self.dtypes = {name: np.dtype(d["dtype"]) for name, d in details.items()}
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.providers: list[str] = [PROVIDER]
        # one interpreter owns its tensors: concurrent calls would overwrite each other's inputs
        self._lock = threading.Lock()

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Raw outputs (B, num_outputs) float32 for padded ids and mask (B, T), any B, T <= max.

        Raises:
            BundleError: ``T`` is longer than the model's static ``max_length``.
        """
        ids, mask = self._to_static_length(np.asarray(ids), np.asarray(mask))
        n = ids.shape[0]
        outputs: list[np.ndarray] = []
        for start in range(0, n, self.batch_size):
            chunk_ids, chunk_mask = (
                ids[start : start + self.batch_size],
                mask[start : start + self.batch_size],
            )
            real = chunk_ids.shape[0]
            if real < self.batch_size:
                # fill with copies of a real row: always a valid input, and its outputs are dropped
                fill = self.batch_size - real
                chunk_ids = np.concatenate([chunk_ids, np.repeat(chunk_ids[:1], fill, axis=0)])
                chunk_mask = np.concatenate([chunk_mask, np.repeat(chunk_mask[:1], fill, axis=0)])
            feeds = {
                self.input_names[0]: chunk_ids.astype(self.dtypes[self.input_names[0]]),
                self.input_names[1]: chunk_mask.astype(self.dtypes[self.input_names[1]]),
            }
            with self._lock:
                result = self._runner(**feeds)
            (out,) = list(result.values())[:1]
            outputs.append(np.asarray(out, dtype=np.float32)[:real])
        if not outputs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outputs)

    def _to_static_length(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pad (B, T) ids and mask out to (B, max_length) on the padding side."""
        length = ids.shape[1]
        if length > self.max_length:
            raise BundleError(
                f"input has {length} tokens, more than the LiteRT model's static "
                f"max_length {self.max_length}"
            )
        extra = self.max_length - length
        if extra == 0:
            return ids, mask
        side = self.padding_side
        if side is None:
            # a left-padded batch has a padded first column (every text has >= 1 token)
            side = "left" if mask.size and bool((mask[:, 0] == 0).any()) else "right"
        widths = ((0, 0), (extra, 0)) if side == "left" else ((0, 0), (0, extra))
        return (
            np.pad(ids, widths, constant_values=self.pad_id),
            np.pad(mask, widths, constant_values=0),
        )


def _cpu_only(providers: str | Sequence[str] | None) -> bool:
    """Whether a provider choice (as :func:`~modelyard.runtime.backends.resolve_providers`
    takes it) asks for nothing but the CPU; ``auto`` falls back to the CPU by definition."""
    if providers is None or providers in ("cpu", "auto"):
        return True
    if isinstance(providers, str):
        return providers in _CPU_NAMES
    return all(p in _CPU_NAMES for p in providers)
