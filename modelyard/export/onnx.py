"""Export a trained run to an ONNX bundle, refusing any graph that disagrees with torch.

``torch.onnx.export(dynamo=True)`` captures the model with dynamic batch and sequence axes into one
self-contained ``model.onnx``. Before a bundle is written, the same token ids go through torch and
ONNX Runtime twice (one batch of mixed lengths, then each text alone) and the largest absolute
difference of the raw outputs must stay within ``config.export.parity_atol``; it is recorded in
the manifest.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from tokenizers import Tokenizer

import modelyard
from modelyard.data import read_table
from modelyard.errors import BundleError, DataError
from modelyard.export.bundle import (
    ACTIVATIONS,
    Bundle,
    Manifest,
    PaddingSide,
    PostProcess,
    TensorSpec,
    now_iso,
    write_bundle,
)
from modelyard.runtime.backends import ONNXBackend
from modelyard.tokenize import PaddedBatch, encode, pad_batch, tokenizer_info
from modelyard.train import Run, load_model

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
MAX_PARITY_TEXTS = 48


@dataclass
class ParityReport:
    """How far ONNX Runtime's raw outputs are from torch's on the same ids."""

    max_abs_diff: float
    atol: float
    num_texts: int
    batch_sizes: list[int]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def export(
    run: Run | str | Path,
    *,
    format: str = "onnx",
    repo: str | Path | None = None,
    which: str = "best",
    name: str | None = None,
) -> Bundle:
    """Export a run's checkpoint as a new bundle version ``REPO/NAME/VERSION/``.

    Args:
        run: a :class:`modelyard.train.Run` or its directory (``runs/NAME``).
        format: the bundle format; ``onnx`` (``tflite`` arrives with the LiteRT exporter).
        repo: the model repository; default: the run config's ``export.repo`` (``models``).
        which: the checkpoint, ``best`` or ``last``.
        name: the model name in the repository; default: the run's name.

    Returns:
        The written :class:`Bundle` (its ``manifest.parity`` holds the measured difference).

    Raises:
        BundleError: the format is unknown, the graph is not self-contained, or ONNX Runtime
            disagrees with torch beyond the tolerance; no bundle is left behind.
        RunError: the run directory is missing or incomplete.
    """
    exporter = EXPORTERS.get(format)
    if exporter is None:
        raise BundleError(f"unknown export format {format!r}; known: {', '.join(EXPORTERS)}")
    run = run if isinstance(run, Run) else Run.load(run)
    return exporter(run, repo=repo, which=which, name=name)


def export_onnx(
    run: Run, *, repo: str | Path | None = None, which: str = "best", name: str | None = None
) -> Bundle:
    """The ONNX exporter behind :func:`export` (same arguments, ``run`` already loaded)."""
    config = run.config
    model = load_model(run, which)
    tokenizer_path = run.dir / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    info = tokenizer_info(tokenizer)
    max_length = info.max_length or config.tokenizer.max_length
    padding_side, truncation_side = _side(info.padding_side), _side(info.truncation_side)
    seqs = parity_sequences(run, tokenizer, info.vocab_size, max_length)
    with tempfile.TemporaryDirectory(prefix="modelyard-export-") as tmp:
        graph = Path(tmp) / "model.onnx"
        example = _example_batch(seqs, pad_id=info.pad_id, side=padding_side)
        export_graph(model, example.ids, example.mask, graph, opset=config.export.opset)
        parity = check_parity(
            model,
            graph,
            seqs,
            pad_id=info.pad_id,
            side=padding_side,
            atol=config.export.parity_atol,
        )
        if not parity.ok:
            raise BundleError(
                f"{run.dir}: ONNX export refused: ONNX Runtime differs from torch by "
                f"{parity.max_abs_diff:.3g} (max abs), over the tolerance "
                f"export.parity_atol={parity.atol:g}"
            )
        num_outputs = run.labels.num_outputs
        manifest = Manifest(
            name=name or config.name,
            version=1,  # the real number is claimed when the bundle is renamed into place
            task=config.task,
            labels=list(run.labels.labels),
            num_outputs=num_outputs,
            inputs=[TensorSpec(n, "int64", ["batch", "sequence"]) for n in INPUT_NAMES],
            outputs=[TensorSpec(OUTPUT_NAME, "float32", ["batch", num_outputs])],
            max_length=max_length,
            padding_side=padding_side,
            truncation_side=truncation_side,
            pad_id=info.pad_id,
            postprocess=PostProcess(activation=ACTIVATIONS[config.task]),
            format="onnx",
            opset=config.export.opset,
            parity={
                "max_abs_diff": parity.max_abs_diff,
                "atol": parity.atol,
                "num_texts": parity.num_texts,
                "batch_sizes": parity.batch_sizes,
                "compared": "raw outputs, torch vs onnxruntime (CPU)",
            },
            metrics=_test_metrics(run),
            variant={"checkpoint": which, "pruning": None, "quantization": None},
            config=config.model_dump(mode="json"),
            source=str(run.dir),
            modelyard_version=modelyard.__version__,
            created_at=now_iso(),
        )
        return write_bundle(
            repo if repo is not None else config.export.repo,
            manifest,
            {"model.onnx": graph, "tokenizer.json": tokenizer_path},
        )


def export_graph(
    model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, path: Path, *, opset: int
) -> None:
    """Write ``model`` as one self-contained ONNX file with dynamic batch and sequence axes.

    Raises:
        BundleError: the exporter fails or the graph needs an external data file.
    """
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    axes = {0: batch, 1: sequence}
    model.eval()
    # the dynamo exporter warns and prints about its own internals (FX, onnxscript); none of it
    # is actionable for a user, and a real failure still raises
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        _quiet_logger("torch.onnx"),
        _fresh_rnn_dispatch(),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (torch.from_numpy(ids), torch.from_numpy(mask)),
                str(path),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAMES[0]: axes, INPUT_NAMES[1]: axes},
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many internal error types
            raise BundleError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    check_graph(path)


def check_graph(path: Path) -> None:
    """Refuse a graph that is not one self-contained file or lost its dynamic axes.

    The dynamo exporter falls back to a draft export when a model specialises on the example's
    shape; the graph then only accepts that exact batch or length, so it is caught here.

    Raises:
        BundleError: external data files, or a batch/sequence axis fixed to a number.
    """
    others = sorted(p.name for p in path.parent.iterdir() if p != path)
    proto = onnx.load(str(path), load_external_data=False)
    external = [
        t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if others or external:
        raise BundleError(
            f"ONNX export wrote external data ({', '.join(others or external)}); "
            "a bundle needs one self-contained model.onnx"
        )
    for graph_input in proto.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        for axis, dim in zip(("batch", "sequence"), dims, strict=False):
            if not dim.dim_param:
                raise BundleError(
                    f"ONNX export fixed the {axis} axis of {graph_input.name} to "
                    f"{dim.dim_value}: the model specialises on the example input's shape "
                    "and cannot serve other batch sizes or lengths"
                )


def check_parity(
    model: torch.nn.Module,
    graph: Path,
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    side: PaddingSide,
    atol: float,
) -> ParityReport:
    """Run the same ids through torch and ONNX Runtime, batched and one by one.

    Args:
        model: the torch model (eval mode).
        graph: the exported ``model.onnx``.
        seqs: token id sequences of mixed lengths.
        pad_id: the padding id.
        side: the padding side.
        atol: the tolerance the report is judged against.

    Returns:
        The largest absolute difference of raw outputs over both passes.
    """
    session = ONNXBackend(graph, input_names=INPUT_NAMES)
    batches = [list(seqs)] + [[s] for s in seqs]
    worst = 0.0
    with torch.no_grad():
        for group in batches:
            padded = pad_batch([list(s) for s in group], pad_id=pad_id, side=side)
            expected = model(torch.from_numpy(padded.ids), torch.from_numpy(padded.mask))
            try:
                got = session.run(padded.ids, padded.mask)
            except Exception as exc:  # ORT's own error types; the graph cannot take this shape
                raise BundleError(
                    f"ONNX Runtime cannot run the exported graph on a batch of shape "
                    f"{padded.ids.shape}: {exc}"
                ) from None
            diff = np.abs(expected.float().numpy() - got)
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            if not np.isfinite(diff).all():
                worst = float("inf")
    return ParityReport(
        max_abs_diff=worst, atol=atol, num_texts=len(seqs), batch_sizes=[len(seqs), 1]
    )


def parity_sequences(
    run: Run, tokenizer: Tokenizer, vocab_size: int, max_length: int, seed: int = 0
) -> list[list[int]]:
    """Token ids to compare torch and ONNX Runtime on: real texts when readable, else synthetic.

    Real texts come from the run's test file, else its validation or training file. Random id
    sequences of length 1, a few in between and the full max length are always added, so the
    graph is checked at the edges of the dynamic sequence axis.
    """
    texts = _sample_texts(run)
    seqs = encode(tokenizer, texts) if texts else []
    rng = np.random.default_rng(seed)
    for length in sorted({1, 2, 3, max(1, max_length // 2), max_length}):
        seqs.append([int(x) for x in rng.integers(1, max(vocab_size, 2), size=length)])
    return seqs


@contextlib.contextmanager
def _fresh_rnn_dispatch() -> Iterator[None]:
    """Clear the dispatch caches of the LSTM/GRU ops around an export.

    torch.onnx swaps in while-loop RNN kernels (for a dynamic sequence axis) by editing the ops'
    ``py_kernels`` without invalidating their dispatch caches; from the second RNN export in a
    process on, the stale cache silently fixes the sequence axis to the example's length
    (torch 2.13). Clearing before and after keeps every export, ours or anyone's, correct.
    """
    ops = [torch.ops.aten.lstm.input, torch.ops.aten.gru.input]
    for op in ops:
        op._dispatch_cache.clear()
    try:
        yield
    finally:
        for op in ops:
            op._dispatch_cache.clear()


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Only errors from ``name`` while exporting (it logs e.g. that torchvision is absent)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _side(value: str) -> PaddingSide:
    if value == "left":
        return "left"
    if value == "right":
        return "right"
    raise BundleError(f"tokenizer.json: unknown padding/truncation side {value!r}")


def _example_batch(seqs: Sequence[Sequence[int]], *, pad_id: int, side: PaddingSide) -> PaddedBatch:
    """Two texts of different lengths, padded: the exporter specialises any axis of size 0 or 1,
    so the example has batch 2 and a sequence of at least 2, with padding in it."""
    by_length = sorted((list(s) for s in seqs), key=len)
    longest = by_length[-1]
    shorter = next((s for s in by_length if 1 < len(s) < len(longest)), by_length[0])
    return pad_batch([longest, shorter], pad_id=pad_id, side=side, length=max(2, len(longest)))


def _sample_texts(run: Run) -> list[str]:
    data = run.config.data
    for source in (data.test, data.validation, data.train):
        if source is None:
            continue
        try:
            table = read_table(
                source, text=data.text, label=None, encoding=data.encoding, skip_bad_rows=True
            )
        except (DataError, OSError):
            continue
        # an even spread over the file, rather than only its first rows
        step = max(1, len(table.texts) // MAX_PARITY_TEXTS)
        return table.texts[::step][:MAX_PARITY_TEXTS]
    return []


def _test_metrics(run: Run) -> dict[str, float] | None:
    metrics: Any = run.test_metrics
    if metrics is None:
        path = run.dir / "eval" / "metrics.json"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    if isinstance(metrics, dict) and isinstance(metrics.get("test"), dict):
        metrics = metrics["test"]
    if not isinstance(metrics, dict):
        return None
    # JSON has no NaN (roc_auc on one class); such a metric is left out rather than faked
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


# bundle format -> exporter; the LiteRT exporter registers "tflite" here
def _export_tflite(run: Run, **kwargs: Any) -> Bundle:
    # imported on use: tflite.py imports this module, and litert-torch is an optional extra
    from modelyard.export.tflite import export_tflite

    return export_tflite(run, **kwargs)


EXPORTERS: dict[str, Callable[..., Bundle]] = {"onnx": export_onnx, "tflite": _export_tflite}
