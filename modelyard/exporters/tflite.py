"""Export a trained run to a LiteRT (TFLite) bundle, refusing any model that disagrees with torch.

``litert_torch.convert`` traces the model with ``torch.export`` and lowers it to one
``model.tflite`` with *static* input shapes ``(batch_size, max_length)``: the runtime
(:class:`modelyard.runtime.litert.LiteRTBackend`) pads every text out to ``max_length`` and
splits batches to ``batch_size``. The converter turns int64 ids into int32. ``int8-dynamic``
then quantizes the converted model with ``ai_edge_quantizer``'s dynamic-range recipe (int8
weights, activations quantized on the fly).

Two gates before a bundle is written, both on the same token ids as the ONNX exporter uses:

- parity: torch and LiteRT on identical padded inputs; the largest absolute difference of the
  raw outputs must stay within ``export.parity_atol`` (fp32) or :data:`INT8_ATOL` (int8);
- padding invariance: the LiteRT outputs for a text alone, in a mixed batch, and padded on the
  other side must agree within the same tolerance (the models canonicalise padding in forward;
  this checks that survives conversion);

and, for int8, the accuracy on the run's test (else validation) data must not drop by more than
``compress.max_accuracy_drop`` points against torch. Every number lands in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from modelyard.bundle import Bundle, PaddingSide, write_bundle
from modelyard.config import NO_TFLITE_KINDS
from modelyard.data import load_splits
from modelyard.errors import BundleError, DataError
from modelyard.exporters.litert_convert import TFLITE_QUANTIZERS, convert
from modelyard.exporters.manifest import INPUT_NAMES, RunTokenizer, run_manifest
from modelyard.exporters.parity import ParityReport, parity_sequences
from modelyard.metrics import higher_is_better
from modelyard.runs import Run, recorded_test_metrics
from modelyard.runtime.litert import LiteRTBackend
from modelyard.runtime.predictor import Predictor
from modelyard.staging import staging_dir
from modelyard.tasks import compute_metrics, get_task
from modelyard.tokenize import encode, pad_batch
from modelyard.training import load_model, predict_texts

MODEL_FILE = "model.tflite"
RUNTIME = "litert"
# int8-dynamic vs torch, largest raw-output difference. Activations are rounded to 8 bits on the
# fly at every op (and at every unrolled step of an RNN), so logits move: on the seed LSTM (logits
# -10..11.5) by 0.03 on average and 0.57 at most over its 1000 test texts, with the same accuracy.
# A broken quantization (wrong scale or zero point) moves them by whole units; accuracy is gated
# separately against compress.max_accuracy_drop.
INT8_ATOL = 1.0
MAX_ACCURACY_TEXTS = 2000


@dataclass
class AccuracyCheck:
    """The task's primary metric through torch and through LiteRT on the same labelled texts."""

    split: str
    metric: str
    torch: float
    litert: float
    drop: float  # points lost vs torch (positive = worse); rmse: relative %
    max_drop: float
    num_texts: int

    @property
    def ok(self) -> bool:
        return self.drop <= self.max_drop


def export_tflite(
    run: Run | str | Path,
    *,
    repo: str | Path | None = None,
    which: str = "best",
    quantize: str | None = None,
    batch_size: int = 1,
    name: str | None = None,
) -> Bundle:
    """Export a run's checkpoint as a new LiteRT bundle version ``REPO/NAME/VERSION/``.

    Args:
        run: a :class:`modelyard.training.Run` or its directory (``runs/NAME``).
        repo: the model repository; default: the run config's ``export.repo`` (``models``).
        which: the checkpoint, ``best`` or ``last``.
        quantize: ``None`` (fp32) or ``int8-dynamic``.
        batch_size: the static batch size of the model (the runtime splits and pads to it).
        name: the model name in the repository; default: the run's name.

    Returns:
        The written :class:`Bundle`; ``manifest.parity`` holds the measured differences and,
        when labelled data was readable, the accuracy comparison.

    Raises:
        BundleError: unknown quantization, conversion failure, LiteRT disagreeing with torch
            beyond the tolerance, padding changing a text's output, or (int8) an accuracy drop
            over ``compress.max_accuracy_drop``; no bundle is left behind.
        RunError: the run directory is missing or incomplete.
    """
    if quantize is not None and quantize not in TFLITE_QUANTIZERS:
        raise BundleError(
            f"unknown TFLite quantization {quantize!r}; known: {', '.join(TFLITE_QUANTIZERS)}"
        )
    if batch_size < 1:
        raise BundleError(f"batch_size must be >= 1, got {batch_size}")
    run = run if isinstance(run, Run) else Run.load(run)
    config = run.config
    why = NO_TFLITE_KINDS.get(config.model.kind)
    if why is not None:
        raise BundleError(f"model.kind {config.model.kind!r} does not convert to TFLite ({why})")
    model = load_model(run, which)
    tok = RunTokenizer.of(run)
    seqs = parity_sequences(run, tok.tokenizer, tok.vocab_size, tok.max_length)
    atol = config.export.parity_atol if quantize is None else INT8_ATOL
    variant_name = f"tflite-{quantize or 'fp32'}"
    repo = Path(repo if repo is not None else config.export.repo)
    # scratch inside the model's directory: what a kill -9 leaves, the next write removes
    with staging_dir(repo / (name or config.name)) as tmp:
        path = tmp / MODEL_FILE
        seconds = convert(model, path, batch_size=batch_size, max_length=tok.max_length)
        if quantize is not None:
            TFLITE_QUANTIZERS[quantize](path)
        backend = LiteRTBackend(
            path, input_names=INPUT_NAMES, pad_id=tok.pad_id, padding_side=tok.padding_side
        )
        parity = check_litert_parity(
            model, backend, seqs, pad_id=tok.pad_id, side=tok.padding_side, atol=atol
        )
        invariance = check_padding_invariance(
            backend, seqs, pad_id=tok.pad_id, side=tok.padding_side
        )
        worst = max(parity.max_abs_diff, invariance)
        if not worst <= atol:
            what = (
                "LiteRT differs from torch"
                if parity.max_abs_diff >= invariance
                else ("LiteRT's output for a text depends on its padding or batch-mates")
            )
            raise BundleError(
                f"{run.dir}: TFLite export ({variant_name}) refused: {what} by {worst:.3g} "
                f"(max abs), over the tolerance {atol:g}"
            )
        dtypes = backend.dtypes
        manifest = run_manifest(
            run,
            tok,
            name=name,
            format="tflite",
            model_file=MODEL_FILE,
            input_dtypes={n: dtypes[n].name for n in INPUT_NAMES},
            input_shape=[batch_size, tok.max_length],
            batch_axis=batch_size,
            opset=None,
            variant={
                "name": variant_name,
                "checkpoint": which,
                "pruning": None,
                "quantization": quantize,
                # TODO(lead): dedicated manifest fields; until then the runtime and static shape
                # travel here (inputs[].shape holds the same numbers)
                "runtime": RUNTIME,
                "static_batch_size": batch_size,
                "static_max_length": tok.max_length,
            },
            metrics=None,
        )
        predictor = Predictor(tmp, manifest, backend, tok.tokenizer)
        accuracy, measured = check_accuracy(run, model, predictor)
        if quantize is not None and accuracy is not None and not accuracy.ok:
            raise BundleError(
                f"{run.dir}: TFLite export ({variant_name}) refused: {accuracy.metric} "
                f"{accuracy.litert:.4f} vs torch {accuracy.torch:.4f} on {accuracy.split} "
                f"({accuracy.drop:.2f} points lost > compress.max_accuracy_drop="
                f"{accuracy.max_drop:g})"
            )
        metrics = measured if accuracy is not None and accuracy.split == "test" else None
        if metrics is None and quantize is None:
            # fp32 within parity_atol of torch: torch's numbers hold
            metrics = recorded_test_metrics(run)
        manifest = replace(
            manifest,
            metrics=metrics,
            parity={
                "max_abs_diff": parity.max_abs_diff,
                "padding_invariance_diff": invariance,
                "atol": atol,
                "num_texts": parity.num_texts,
                "batch_sizes": parity.batch_sizes,
                "compared": f"raw outputs, torch vs LiteRT ({variant_name}, CPU)",
                "accuracy": asdict(accuracy) if accuracy is not None else None,
                "convert_seconds": round(seconds, 1),
            },
        )
        return write_bundle(repo, manifest, {MODEL_FILE: path, "tokenizer.json": tok.path})


def check_litert_parity(
    model: torch.nn.Module,
    backend: LiteRTBackend,
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    side: PaddingSide,
    atol: float,
) -> ParityReport:
    """Run identical padded ids through torch and LiteRT: all texts together, then one by one.

    Both get each text padded to the static ``max_length`` on ``side`` (LiteRT cannot take
    anything else), so the difference is the conversion's alone.

    Returns:
        The largest absolute difference of raw outputs over both passes.
    """
    groups = [list(seqs)] + [[s] for s in seqs]
    worst = 0.0
    with torch.no_grad():
        for group in groups:
            padded = pad_batch(
                [list(s) for s in group], pad_id=pad_id, side=side, length=backend.max_length
            )
            expected = model(torch.from_numpy(padded.ids), torch.from_numpy(padded.mask))
            got = _run(backend, padded.ids, padded.mask)
            diff = np.abs(expected.float().numpy() - got)
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            if not np.isfinite(diff).all():
                worst = float("inf")
    return ParityReport(
        max_abs_diff=worst,
        atol=atol,
        num_texts=len(seqs),
        batch_sizes=[len(seqs), 1],
    )


def check_padding_invariance(
    backend: LiteRTBackend, seqs: Sequence[Sequence[int]], *, pad_id: int, side: PaddingSide
) -> float:
    """The largest change of a text's LiteRT output when it is padded or batched differently.

    Compares each text alone, padded only to its own length on ``side``, with the same text in
    one batch of all texts (padded to the longest) and in that batch padded on the other side.
    """
    other: PaddingSide = "left" if side == "right" else "right"
    alone = np.concatenate(
        [
            _run(backend, b.ids, b.mask)
            for b in (pad_batch([list(s)], pad_id=pad_id, side=side) for s in seqs)
        ]
    )
    worst = 0.0
    for pad_side in (side, other):
        batch = pad_batch([list(s) for s in seqs], pad_id=pad_id, side=pad_side)
        diff = np.abs(_run(backend, batch.ids, batch.mask) - alone)
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        if not np.isfinite(diff).all():
            worst = float("inf")
    return worst


def check_accuracy(
    run: Run, model: torch.nn.Module, predictor: Predictor
) -> tuple[AccuracyCheck | None, dict[str, float] | None]:
    """Score the run's test data (else its validation split) through torch and through LiteRT.

    Args:
        run: the run (its config names the data; the validation split is re-drawn with its seed).
        model: the torch model.
        predictor: a predictor over the converted model (the runtime's own pre/post-processing).

    Returns:
        The comparison of the primary metric and every LiteRT metric, or ``(None, None)`` when
        the run's data files cannot be read.
    """
    try:
        splits = load_splits(run.config)
    except (DataError, OSError):
        return None, None
    split, examples = ("test", splits.test) if splits.test else ("validation", splits.validation)
    if not examples.texts:
        return None, None
    texts = examples.texts[:MAX_ACCURACY_TEXTS]
    targets = examples.targets[: len(texts)]
    task, labels = run.config.task, list(run.labels.labels)
    reference = predict_texts(run, texts, model=model)
    scores = predictor.infer(encode(predictor.tokenizer, texts))
    want = compute_metrics(task, targets, reference, labels)
    got = compute_metrics(task, targets, scores, labels)
    metric = get_task(task).primary_metric
    ref, score = want[metric], got[metric]
    if higher_is_better(metric):
        drop = 100.0 * (ref - score)
    else:
        drop = 100.0 * (score - ref) / ref if ref else 100.0 * (score - ref)
    check = AccuracyCheck(
        split=split,
        metric=metric,
        torch=ref,
        litert=score,
        drop=drop,
        max_drop=run.config.compress.max_accuracy_drop,
        num_texts=len(texts),
    )
    return check, got


def _run(backend: LiteRTBackend, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    try:
        return backend.run(ids, mask)
    except (ValueError, RuntimeError) as exc:  # LiteRT's errors for a shape it cannot take
        raise BundleError(f"LiteRT cannot run the converted model on {ids.shape}: {exc}") from None
