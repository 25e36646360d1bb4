"""Measure a bundle the way it will run: accuracy, size, latency and throughput (no torch).

Every number comes from the torch-free runtime (:func:`modelyard.runtime.load`) on the bundle
itself, tokenization included, so a variant is judged exactly as the server would run it. The
fp32 bundle is the reference: a variant whose primary metric falls more than ``max_drop`` points
below it is marked rejected, with the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.bundle import Manifest
from modelyard.config import REFERENCE_FORMAT
from modelyard.errors import BundleError, DataError
from modelyard.metrics import finite_or_none, higher_is_better, json_safe, proportion_interval
from modelyard.tasks import compute_metrics, get_task, primary_metrics

MIB = 2**20
LATENCY_BATCH = 1
THROUGHPUT_BATCH = 32


@dataclass
class LabelledTexts:
    """Texts with their encoded targets, and what they are (``validation``, ``test``, ``file``)."""

    texts: list[str]
    targets: np.ndarray
    source: str
    split: str


@dataclass
class Measurement:
    """One variant, measured through the runtime on the same texts as its reference.

    Variants are *selected* on one set of texts (the validation split: ``score``, ``drop``,
    ``rejected``) and *reported* on another (the test file: ``test_metrics``), so the numbers a
    user reads were not used to pick the variant.

    Attributes:
        name: the variant, e.g. ``fp32``, ``int8-dynamic``, ``pruned50+int8-dynamic``,
            ``tflite-fp32``.
        format: ``onnx`` or ``tflite``.
        bundle: the bundle directory ``REPO/NAME/VERSION``.
        version: the bundle version.
        size_mb: the model file's size in MiB (2**20 bytes).
        p50_ms: median latency of one text (batch 1), tokenization included.
        p99_ms: 99th percentile of the same.
        throughput: texts per second at batch 32, tokenization included.
        metrics: every task metric on the selection texts (``selected_on``).
        score: the task's primary metric on them (``metrics[get_task(task).primary_metric]``).
        drop: points lost against the reference (positive = worse): ``100 * (ref - score)``
            for a higher-is-better metric, the relative increase in percent
            ``100 * (score - ref) / ref`` for a lower-is-better one (rmse). 0 for the reference.
        rejected: why the variant is rejected (``"accuracy drop 2.3 points > 1.0"``), or ``None``.
        selected_on: where the selection texts came from, and which split they are.
        num_scored: how many selection texts (the margin of :func:`modelyard.choice.choose`).
        test_metrics: every task metric on the test texts; empty without test data.
        test_size: how many test texts.
    """

    name: str
    format: str
    bundle: str
    version: int
    size_mb: float
    p50_ms: float
    p99_ms: float
    throughput: float
    metrics: dict[str, float] = field(default_factory=dict)
    score: float = float("nan")
    drop: float = 0.0
    rejected: str | None = None
    selected_on: str = ""
    num_scored: int = 0
    test_metrics: dict[str, float] = field(default_factory=dict)
    test_size: int = 0

    def test_score(self, metric: str) -> float:
        """The primary metric on the test texts (NaN without test data)."""
        return float(self.test_metrics.get(metric, float("nan")))

    def manifest_metrics(self) -> dict[str, float] | None:
        """What a bundle's manifest calls its metrics: the test metrics (finite ones), if any."""
        found = {k: v for k, v in self.test_metrics.items() if math.isfinite(v)}
        return found or None

    def manifest_record(self) -> dict[str, Any]:
        """The manifest's ``variant.measured``: how the variant ran and where it was scored."""
        return json_safe(
            {
                "size_mb": self.size_mb,
                "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms,
                "throughput": self.throughput,
                "score": self.score,
                "drop": self.drop,
                "selected_on": self.selected_on,
                "num_texts": self.num_scored,
                "test_size": self.test_size,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN metrics become ``None``: JSON has no NaN)."""
        out = asdict(self)
        out["metrics"] = json_safe(dict(self.metrics))
        out["test_metrics"] = json_safe(dict(self.test_metrics))
        for key in ("score", "drop", "p50_ms", "p99_ms", "throughput", "size_mb"):
            out[key] = finite_or_none(out[key])
        return out


def variant_name(manifest: Manifest) -> str:
    """The variant's short name, from ``manifest.variant["name"]`` or derived from its parts.

    Bundles written by :func:`modelyard.exporters.export` carry no name; they are ``fp32``.
    """
    variant = manifest.variant or {}
    name = variant.get("name")
    if isinstance(name, str) and name:
        return name
    quant = variant.get("quantization")
    mode = quant.get("mode") if isinstance(quant, dict) else quant
    base = str(mode) if mode else "fp32"
    return base if manifest.format == REFERENCE_FORMAT else f"{manifest.format}-{base}"


def accuracy_drop(metric: str, score: float, reference: float) -> float:
    """Points lost from ``reference`` to ``score`` (positive = worse); see :class:`Measurement`."""
    if higher_is_better(metric):
        return 100.0 * (reference - score)
    if reference == 0:
        return 0.0 if score == 0 else float("inf")
    return 100.0 * (score - reference) / abs(reference)


def rejection(metric: str, drop: float, max_drop: float) -> str | None:
    """The reason a drop rejects a variant, or ``None`` when it is within ``max_drop``."""
    if drop <= max_drop:
        return None
    if not math.isfinite(drop):
        return f"{metric} is not finite against the reference"
    unit = "points" if higher_is_better(metric) else "% worse"
    return f"{metric} drop {drop:.2f} {unit} > {max_drop:g}"


def measure_bundle(
    path: str | Path,
    texts: Sequence[str],
    targets: np.ndarray,
    task: str,
    labels: Sequence[str],
    *,
    reference: float | None = None,
    max_drop: float = 1.0,
    latency_runs: int = 200,
    throughput_batches: int = 20,
    name: str | None = None,
    intra_op_threads: int | None = 1,
    selected_on: str = "",
    test: LabelledTexts | None = None,
) -> Measurement:
    """Score and time one bundle through the runtime.

    Args:
        path: ``REPO/NAME/VERSION`` (or ``REPO/NAME`` for its default version).
        texts: the texts variants are selected on (the validation split).
        targets: their encoded targets, as :meth:`modelyard.data.LabelSpace.encode` gives them
            for ``labels``.
        task: the task; the bundle must be for it.
        labels: the class names the targets were encoded with; the bundle's must match.
        reference: the reference's primary metric (the fp32 bundle); ``None``: this bundle is
            the reference (drop 0, never rejected).
        max_drop: the largest drop (see :class:`Measurement`) that is still accepted.
        latency_runs: single-text predictions timed for p50/p99 (texts taken in turn).
        throughput_batches: batches of 32 texts timed for throughput.
        name: the variant name; default: from the manifest (:func:`variant_name`).
        intra_op_threads: ONNX Runtime threads; 1 by default, as the server runs each model.
        selected_on: where ``texts`` came from (for the record).
        test: the test texts the variant is reported on; ``None``: no test data.

    Returns:
        The :class:`Measurement`.

    Raises:
        BundleError: the bundle is missing, corrupted, for another task, or its labels differ.
        DataError: no texts, or texts and targets of different lengths.
    """
    from modelyard.runtime import load_predictor

    if not texts:
        raise DataError("cannot measure a bundle on zero texts")
    if len(texts) != len(targets):
        raise DataError(f"{len(texts)} texts but {len(targets)} targets")
    predictor = load_predictor(path, task=task, intra_op_threads=intra_op_threads)
    manifest = predictor.manifest
    if list(manifest.labels) != list(labels):
        raise BundleError(
            f"{predictor.path}: bundle labels {manifest.labels} differ from the data's "
            f"{list(labels)}"
        )
    metrics = _metrics(predictor, texts, targets, task, labels)
    test_metrics = _metrics(predictor, test.texts, test.targets, task, labels) if test else {}
    metric = get_task(task).primary_metric
    score = float(metrics[metric])
    drop = 0.0 if reference is None else accuracy_drop(metric, score, reference)
    p50, p99 = _latency(predictor, texts, latency_runs)
    model_file = predictor.path / manifest.model_file
    return Measurement(
        name=name or variant_name(manifest),
        format=manifest.format,
        bundle=str(predictor.path),
        version=manifest.version,
        size_mb=model_file.stat().st_size / MIB,
        p50_ms=p50,
        p99_ms=p99,
        throughput=_throughput(predictor, texts, throughput_batches),
        metrics=metrics,
        score=score,
        drop=drop,
        rejected=None if reference is None else rejection(metric, drop, max_drop),
        selected_on=selected_on,
        num_scored=len(texts),
        test_metrics=test_metrics,
        test_size=len(test.texts) if test else 0,
    )


SPEED_TOKENS = 64  # tokens decoded per speed sample, whatever the model would answer


def measure_generative_bundle(
    path: str | Path,
    requests: Sequence[str | Sequence[Mapping[str, str]]],
    *,
    runs: int = 8,
    threads: int | None = None,
) -> Measurement:
    """Time a generative bundle through its engine, one stream; its quality is what its export
    scored (``manifest.variant["quality"]``: validation perplexity against the run's in torch,
    test ROUGE-L).

    For a generative variant ``p50_ms`` / ``p99_ms`` are the time to the first token of a
    request (prompt processing and one sampled token, wall clock) and ``throughput`` is decode
    tokens per second (llama.cpp's own count over :data:`SPEED_TOKENS` tokens, the end of the
    answer ignored).

    Args:
        path: ``REPO/NAME/VERSION``.
        requests: prompts or chats (the validation records), taken in turn.
        runs: requests timed for each figure (after one warm-up).
        threads: the engine's threads (default: one per core).

    Raises:
        BundleError: not a generative bundle, or the engine cannot load it.
    """
    from modelyard.bundle import verify_bundle
    from modelyard.runtime.llama_cpp import LlamaCppGenerator

    bundle = verify_bundle(path)
    manifest, spec = bundle.manifest, bundle.manifest.generation
    if spec is None or not requests:
        raise BundleError(f"{bundle.path}: not a generative bundle, or no requests to time")
    quality = dict(manifest.variant.get("quality") or {})
    model_file = bundle.path / manifest.model_file
    ttft, speed = np.empty(max(runs, 1)), np.empty(max(runs, 1))
    with LlamaCppGenerator(model_file, context_length=spec.context_length, threads=threads) as g:
        g.generate(requests[0], max_tokens=1)  # warm-up: first allocations
        for i in range(len(ttft)):
            request = requests[i % len(requests)]
            t0 = time.perf_counter()
            g.generate(request, max_tokens=1)
            ttft[i] = (time.perf_counter() - t0) * 1e3
            speed[i] = decode_speed(g, request)
    perplexity = float(quality.get("val_perplexity", math.nan))
    test = {k: float(v) for k, v in (manifest.metrics or {}).items() if k != "val_perplexity"}
    return Measurement(
        name=variant_name(manifest),
        format=manifest.format,
        bundle=str(bundle.path),
        version=manifest.version,
        size_mb=model_file.stat().st_size / MIB,
        p50_ms=float(np.percentile(ttft, 50)),
        p99_ms=float(np.percentile(ttft, 99)),
        throughput=float(np.median(speed)),
        metrics={"perplexity": perplexity},
        score=perplexity,
        drop=float(quality.get("perplexity_rise", math.nan)),
        rejected=manifest.variant.get("rejected"),
        selected_on=f"validation ({quality.get('validation', 0)} records)",
        num_scored=int(quality.get("validation", 0)),
        test_metrics=test,
        test_size=int(quality.get("test", 0)),
    )


def decode_speed(generator: Any, request: str | Sequence[Mapping[str, str]]) -> float:
    """Tokens per second of one stream decoding :data:`SPEED_TOKENS` tokens (llama.cpp's
    timing of its decode steps, prompt processing excluded)."""
    body: dict[str, Any] = {
        "max_tokens": SPEED_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "cache_prompt": False,
    }
    if isinstance(request, str):
        answer = generator.engine.handle_completions({**body, "prompt": request})
    else:
        answer = generator.engine.handle_chat_completions({**body, "messages": list(request)})
    timings = answer.get("timings") if isinstance(answer, Mapping) else None
    if not timings:
        raise BundleError(f"llama.cpp did not answer with timings: {str(answer)[:200]}")
    return float(timings["predicted_per_second"])


def _metrics(
    predictor: Any, texts: Sequence[str], targets: np.ndarray, task: str, labels: Sequence[str]
) -> dict[str, float]:
    if not len(texts):
        return {}
    scores = predictor.infer(predictor.encode(list(texts)))
    threshold = predictor.manifest.postprocess.threshold
    found = compute_metrics(task, targets, scores, list(labels), threshold=threshold)
    return {k: float(v) for k, v in found.items()}


def _latency(predictor: Any, texts: Sequence[str], runs: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``predict([text])``; a short warm-up is not counted."""
    for i in range(20):
        predictor.predict([texts[i % len(texts)]])
    times = np.empty(max(runs, 1))
    for i in range(len(times)):
        text = texts[i % len(texts)]
        t0 = time.perf_counter()
        predictor.predict([text])
        times[i] = time.perf_counter() - t0
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def _throughput(predictor: Any, texts: Sequence[str], batches: int) -> float:
    """Texts per second over ``batches`` batches of 32 (texts taken in turn, wrapping)."""
    n = THROUGHPUT_BATCH
    pool = list(texts) * math.ceil(n * max(batches, 1) / len(texts))
    predictor.predict(pool[:n])  # warm-up at this batch shape
    t0 = time.perf_counter()
    for b in range(max(batches, 1)):
        predictor.predict(pool[b * n : (b + 1) * n])
    elapsed = time.perf_counter() - t0
    return n * max(batches, 1) / max(elapsed, 1e-9)


def format_table(measurements: Sequence[Measurement], *, metric: str | None = None) -> str:
    """A plain-text table of variants, with size and speed ratios against the first row.

    The score and drop columns are on the selection texts (validation); ``test`` is the same
    metric on the test texts, with its 95% interval for accuracy.

    Args:
        measurements: the variants; the first is the reference the ratios are taken against.
        metric: the name of the score column (default ``score``).

    Returns:
        The table, one variant per line.
    """
    if not measurements:
        return "(no variants)"
    ref = measurements[0]
    name = metric or _primary(ref)
    w = max(len("variant"), *(len(m.name) for m in measurements))
    header = (
        f"{'variant':<{w}} {'ver':>4} {'size MB':>8} {'size x':>7} {'val ' + name:>13} "
        f"{'drop':>6} {'test':>22} {'p50 ms':>7} {'p99 ms':>7} {'texts/s@32':>10} {'thr x':>6}"
        "  status"
    )
    lines = [header, "-" * len(header)]
    for m in measurements:
        size_ratio = m.size_mb / ref.size_mb if ref.size_mb else float("nan")
        thr_ratio = m.throughput / ref.throughput if ref.throughput else float("nan")
        status = f"rejected: {m.rejected}" if m.rejected else "ok"
        lines.append(
            f"{m.name:<{w}} {m.version:>4} {m.size_mb:>8.3f} {size_ratio:>7.3f} {m.score:>13.4f} "
            f"{m.drop:>6.2f} {format_test_score(m, name):>22} {m.p50_ms:>7.2f} {m.p99_ms:>7.2f} "
            f"{m.throughput:>10.0f} {thr_ratio:>6.2f}  {status}"
        )
    selected = ref.selected_on or "the given texts"
    lines.append(f"(selected on {selected}; test: the test file, never used to select)")
    return "\n".join(lines)


def _primary(m: Measurement) -> str:
    return next((k for k in primary_metrics() if m.metrics.get(k) == m.score), "score")


def format_test_score(m: Measurement, metric: str) -> str:
    """``0.7320 [0.704, 0.759]`` (accuracy with its 95% interval), or ``-`` without test data."""
    value = m.test_score(metric)
    if not m.test_metrics or not math.isfinite(value):
        return "-"
    if metric != "accuracy":
        return f"{value:.4f}"
    lo, hi = proportion_interval(value, m.test_size)
    return f"{value:.4f} [{lo:.3f}, {hi:.3f}]"
