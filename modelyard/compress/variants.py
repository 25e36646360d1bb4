"""``compress``: build every asked-for variant of a model as a new bundle version, and measure it.

From a run (``runs/NAME``) the fp32 reference is the run's ONNX export (an existing export of
the same checkpoint is reused); pruning happens in torch and the pruned model is exported and
checked against torch like any export. From a bundle (``models/NAME``) only graph-level
variants can be built: clipping and quantization.

Each variant becomes its own bundle version whose manifest records what was done (``variant``:
name, pruning, clip, quantization, the measurements, and whether it was rejected). Before it is
written, the variant is staged as a bundle in a temporary repository and measured through the
runtime on the test texts, so its manifest carries its own test metrics. All scratch space lives
in the model's own directory (:mod:`modelyard.staging`), so a killed compress leaves nothing in
the system temp directory, and the next write removes what it left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tokenizers import Tokenizer

from modelyard.bundle import Bundle
from modelyard.compress.clip import ClipReport, ClipSpec, clip_weights, parse_clip
from modelyard.compress.generative import compress_generative
from modelyard.compress.quantize import QUANTIZERS, CalibrationData, check_modes, preprocess
from modelyard.compress.sources import EvalData, Source, calibration_data, eval_data, open_source
from modelyard.compress.write import (
    Base,
    VariantSettings,
    measure_variant,
    variant_record,
    write_variant,
)
from modelyard.errors import BundleError, ConfigError
from modelyard.measure import Measurement
from modelyard.runs import Run, is_run_dir
from modelyard.runtime.backends import ONNXBackend
from modelyard.staging import staging_dir
from modelyard.tasks import get_task
from modelyard.tokenize import encode, pad_batch

log = logging.getLogger("modelyard.compress")

PRUNE_KINDS = ("unstructured", "structured")


PARITY_TEXTS = 64


def compress(
    source: str | Path,
    *,
    prune: float | None = None,
    prune_kind: str = "unstructured",
    finetune_epochs: int = 0,
    quantize: Sequence[str] = (),
    clip: float | str | None = None,
    repo: str | Path | None = None,
    max_accuracy_drop: float = 1.0,
    data: str | Path | None = None,
    calibration_texts: int = 256,
    latency_runs: int = 200,
    throughput_batches: int = 20,
    intra_op_threads: int | None = 1,
) -> list[Measurement]:
    """Build, write and measure compressed variants of a model.

    Variants: each ``quantize`` mode on the fp32 graph (clipped first when ``clip`` is given);
    with ``prune``, the pruned fp32 model and each mode on it too (``pruned50+int8-dynamic``).
    ``clip`` without ``quantize`` gives one clipped fp32 variant per base graph.

    Args:
        source: ``runs/NAME`` (a training run) or ``models/NAME[/VERSION]`` (an fp32 ONNX
            bundle; the latest fp32 version when no version is named).
        prune: fraction to prune (needs a run); ``None``: no pruning.
        prune_kind: ``unstructured`` (global magnitude) or ``structured`` (whole units).
        finetune_epochs: epochs of training after pruning, masks kept (needs ``prune``).
        quantize: modes from :data:`modelyard.compress.QUANTIZERS`: ``int8-dynamic``,
            ``int8-static``, ``fp16``.
        clip: clip outlier weights before quantization: a value (``3.0``: to ±3) or a
            percentile of each tensor's ``|w|`` (``"p99.9"``).
        repo: where the variant bundles go; default: the run config's ``export.repo``, or the
            source bundle's own repository.
        max_accuracy_drop: a variant losing more than this (points of the primary metric; for
            rmse, percent) against the fp32 reference is marked rejected.
        data: a labelled file to measure on; default: the config's test file, else its
            validation split.
        calibration_texts: training texts sampled for ``int8-static`` calibration.
        latency_runs: single-text predictions timed per variant (p50/p99).
        throughput_batches: batches of 32 timed per variant.
        intra_op_threads: ONNX Runtime threads while measuring (1: as the server runs).

    Returns:
        One :class:`~modelyard.measure.Measurement` per bundle: the fp32 reference first,
        then the variants in the order they were built.

    Raises:
        ConfigError: an unknown mode or prune kind, pruning without a run, or fine-tuning
            without pruning.
        BundleError: the source bundle is missing, not fp32 ONNX, or a graph fails to build.
        DataError: no labelled data to measure on.
    """
    modes = check_modes(quantize)
    clip_spec = parse_clip(clip) if clip is not None else None
    if prune_kind not in PRUNE_KINDS:
        raise ConfigError(
            f"compress.prune_kind: unknown kind {prune_kind!r}; known: {', '.join(PRUNE_KINDS)}"
        )
    if prune is not None and not 0.0 <= prune < 1.0:
        raise ConfigError(f"compress.prune: must be in [0, 1), got {prune}")
    if finetune_epochs and prune is None:
        raise ConfigError("compress.finetune_epochs needs compress.prune (it recovers pruning)")
    if is_run_dir(source) and get_task(Run.load(source).task).generative:
        if prune is not None or clip is not None or modes:
            raise BundleError(
                f"{source} is a generation run: its variants are the GGUF types of its config's "
                "compress.gguf (f16, q8_0, q4_0), which `modelyard compress RUN` without "
                "--prune/--quantize/--clip builds; `modelyard export RUN --merged DIR` writes "
                "the merged model"
            )
        return compress_generative(source, repo=repo)
    src = open_source(Path(source), repo)
    if prune is not None and src.run is None:
        raise ConfigError(
            f"{source}: pruning needs the training run (runs/NAME): a bundle holds no torch model"
        )
    manifest = src.reference.manifest
    evaluation = eval_data(src.config, manifest, data)
    settings = VariantSettings(
        repo=src.repo,
        max_drop=max_accuracy_drop,
        latency_runs=latency_runs,
        throughput_batches=throughput_batches,
        intra_op_threads=intra_op_threads,
    )
    log.info("compress: measuring the fp32 reference %s", src.reference.path)
    reference = measure_variant(
        src.reference.path, evaluation, settings, manifest, name="fp32", ref=None
    )
    settings.reference_score = reference.score
    results = [reference]
    calibration = None
    if "int8-static" in modes:
        calibration = calibration_data(src, evaluation, calibration_texts)
    # scratch inside the model's directory: what a kill -9 leaves, the next write removes
    with staging_dir(settings.repo / manifest.name) as work:
        bases = [Base("", src.reference.path / manifest.model_file, src.reference.version)]
        if prune is not None and src.run is not None:
            from modelyard.compress.pruned_base import pruned_base  # torch: only pruning needs it

            base, measured = pruned_base(
                src, prune, prune_kind, finetune_epochs, evaluation, settings, work
            )
            bases.append(base)
            results.append(measured)
        for base in bases:
            results += _graph_variants(
                src, base, modes, clip_spec, calibration, evaluation, settings, work
            )
    return results


def _graph_variants(
    src: Source,
    base: Base,
    modes: list[str],
    clip_spec: ClipSpec | None,
    calibration: CalibrationData | None,
    evaluation: EvalData,
    settings: VariantSettings,
    work: Path,
) -> list[Measurement]:
    """Clip and/or quantize one base graph: one written, measured bundle per mode."""
    if not modes and clip_spec is None:
        return []
    folder = work / (base.name or "fp32")
    folder.mkdir(exist_ok=True)
    graph = folder / "pre.onnx"
    preprocess(base.graph, graph)
    clip_report: ClipReport | None = None
    if clip_spec is not None:
        graph, clip_report = _clipped(graph, clip_spec, folder / "clipped.onnx")
    prefix = [p for p in (base.name, clip_spec.name if clip_spec else "") if p]
    clip_dict = clip_report.to_dict() if clip_report is not None else None
    out: list[Measurement] = []
    if not modes:  # clipping alone: one clipped float variant
        variant = variant_record(src, "+".join(prefix), base=base, clip=clip_dict)
        parity = _raw_parity(base.graph, graph, src.reference, evaluation)
        out.append(write_variant(src, graph, variant, parity, evaluation, settings))
    for mode in modes:
        target = folder / f"{mode}.onnx"
        log.info("compress: %s", "+".join([*prefix, mode]))
        try:
            details = QUANTIZERS[mode](graph, target, calibration=calibration)
        except (BundleError, ConfigError):
            raise
        except Exception as exc:  # ORT's quantizers raise many types
            raise BundleError(f"{mode} quantization failed: {type(exc).__name__}: {exc}") from exc
        variant = variant_record(
            src, "+".join([*prefix, mode]), base=base, clip=clip_dict, quantization=details
        )
        parity = _raw_parity(base.graph, target, src.reference, evaluation)
        out.append(write_variant(src, target, variant, parity, evaluation, settings))
    return out


def _clipped(graph: Path, spec: ClipSpec, target: Path) -> tuple[Path, ClipReport]:
    model = onnx.load(str(graph))
    report = clip_weights(model, spec)
    onnx.save(model, str(target))
    log.info("compress: %s clipped %d of %d weights", spec.name, report.clipped, report.total)
    return target, report


def _raw_parity(base: Path, graph: Path, ref: Bundle, evaluation: EvalData) -> dict[str, Any]:
    """Largest raw-output difference between the base graph and the variant on test texts."""
    manifest = ref.manifest
    names = [spec.name for spec in manifest.inputs]
    tokenizer_path = ref.path / manifest.tokenizer_file
    texts = evaluation.texts[:PARITY_TEXTS]
    seqs = encode(Tokenizer.from_file(str(tokenizer_path)), texts)
    a = ONNXBackend(base, input_names=names, intra_op_threads=1)
    b = ONNXBackend(graph, input_names=names, intra_op_threads=1)
    worst = 0.0
    for start in range(0, len(seqs), 16):
        batch = pad_batch(seqs[start : start + 16], pad_id=manifest.pad_id,
                          side=manifest.padding_side)  # fmt: skip
        diff = np.abs(a.run(batch.ids, batch.mask) - b.run(batch.ids, batch.mask))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return {
        "max_abs_diff": worst,
        "atol": None,
        "num_texts": len(seqs),
        "compared": "raw outputs, float base graph vs this graph (onnxruntime CPU)",
    }
