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
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from modelyard.bundle import Bundle, PaddingSide, write_bundle
from modelyard.errors import BundleError
from modelyard.exporters.manifest import (
    INPUT_NAMES,
    OUTPUT_NAME,
    RunTokenizer,
    run_manifest,
)
from modelyard.exporters.parity import ParityReport, example_batch, parity_sequences
from modelyard.logs import quiet_logger
from modelyard.runs import Run, recorded_test_metrics
from modelyard.runtime.backends import ONNXBackend
from modelyard.staging import staging_dir
from modelyard.tokenize import pad_batch
from modelyard.training import load_model


def export_onnx(
    run: Run, *, repo: str | Path | None = None, which: str = "best", name: str | None = None
) -> Bundle:
    """Export a run's checkpoint as a new ONNX bundle version ``REPO/NAME/VERSION/``.

    Args:
        run: the loaded :class:`~modelyard.runs.Run`.
        repo: the model repository; default: the run config's ``export.repo`` (``models``).
        which: the checkpoint, ``best`` or ``last``.
        name: the model name in the repository; default: the run's name.

    Returns:
        The written :class:`Bundle` (its ``manifest.parity`` holds the measured difference).

    Raises:
        BundleError: the graph is not self-contained, or ONNX Runtime disagrees with torch beyond
            the tolerance; no bundle is left behind.
    """
    config = run.config
    model = load_model(run, which)
    tok = RunTokenizer.of(run)
    repo = Path(repo if repo is not None else config.export.repo)
    # scratch inside the model's directory: what a kill -9 leaves, the next write removes
    with staging_dir(repo / (name or config.name)) as tmp:
        # a folder of its own: the graph must be alone in it (check_graph), and the exporter's
        # temporary files (torch's caches) go to the staging directory too
        graph = tmp / "graph" / "model.onnx"
        graph.parent.mkdir()
        parity = export_checked_graph(model, run, tok, graph, what="ONNX export")
        manifest = run_manifest(
            run,
            tok,
            name=name,
            format="onnx",
            model_file="model.onnx",
            input_dtypes=dict.fromkeys(INPUT_NAMES, "int64"),
            input_shape=["batch", "sequence"],
            batch_axis="batch",
            opset=config.export.opset,
            variant={"checkpoint": which, "pruning": None, "quantization": None},
            metrics=recorded_test_metrics(run),
            parity={**parity_record(parity), "compared": "raw outputs, torch vs onnxruntime (CPU)"},
        )
        return write_bundle(repo, manifest, {"model.onnx": graph, "tokenizer.json": tok.path})


def export_checked_graph(
    model: torch.nn.Module, run: Run, tok: RunTokenizer, graph: Path, *, what: str
) -> ParityReport:
    """Export ``model`` to ``graph`` and compare it with torch on the run's parity texts.

    Args:
        model: the torch model (a run's checkpoint, or one changed from it, e.g. pruned).
        run: the run whose texts, tokenizer and export settings are used.
        tok: the run's tokenizer facts.
        graph: where ``model.onnx`` goes.
        what: names the export in the error (``ONNX export``).

    Raises:
        BundleError: the exporter fails, or ONNX Runtime differs from torch by more than
            ``export.parity_atol``.
    """
    export_cfg = run.config.export
    seqs = parity_sequences(run, tok.tokenizer, tok.vocab_size, tok.max_length)
    example = example_batch(seqs, pad_id=tok.pad_id, side=tok.padding_side)
    export_graph(model, example.ids, example.mask, graph, opset=export_cfg.opset)
    parity = check_onnx_parity(
        model, graph, seqs, pad_id=tok.pad_id, side=tok.padding_side, atol=export_cfg.parity_atol
    )
    if not parity.ok:
        raise BundleError(
            f"{run.dir}: {what} refused: ONNX Runtime differs from torch by "
            f"{parity.max_abs_diff:.3g} (max abs), over the tolerance "
            f"export.parity_atol={parity.atol:g}"
        )
    return parity


def parity_record(parity: ParityReport) -> dict[str, Any]:
    """The manifest's ``parity`` fields for a torch vs ONNX Runtime comparison."""
    return {
        "max_abs_diff": parity.max_abs_diff,
        "atol": parity.atol,
        "num_texts": parity.num_texts,
        "batch_sizes": parity.batch_sizes,
    }


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
        quiet_logger("torch.onnx"),
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


def check_onnx_parity(
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
