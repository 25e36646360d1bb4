"""Each variant is staged as a bundle, measured through the runtime, then written for good with
its measurements (and whether it was rejected) in its manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import modelyard
from modelyard.bundle import Manifest, now_iso, write_bundle
from modelyard.compress.sources import EvalData, Source
from modelyard.measure import Measurement, measure_bundle
from modelyard.staging import staging_dir

log = logging.getLogger("modelyard.compress")


@dataclass
class Base:
    """A float graph the quantized variants start from: the fp32 export or a pruned one."""

    name: str  # "" for the fp32 reference, else e.g. "pruned50"
    graph: Path
    version: int
    pruning: dict[str, Any] | None = None


@dataclass
class VariantSettings:
    """What every variant of one ``compress`` call shares: the repository it is written to,
    how it is measured, and the fp32 reference's score it is judged against."""

    repo: Path
    max_drop: float
    latency_runs: int
    throughput_batches: int
    intra_op_threads: int | None
    reference_score: float = float("nan")


def variant_record(
    src: Source,
    name: str,
    *,
    base: Base | None = None,
    pruning: dict[str, Any] | None = None,
    clip: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's ``variant`` record (measurements are added once measured)."""
    ref = src.reference
    return {
        "name": name,
        "checkpoint": (ref.manifest.variant or {}).get("checkpoint", "best"),
        "reference_version": ref.version,
        "base": {"name": base.name or "fp32", "version": base.version} if base else None,
        "pruning": pruning if pruning is not None else (base.pruning if base else None),
        "clip": clip,
        "quantization": quantization,
    }


def measure_variant(
    path: Path,
    evaluation: EvalData,
    settings: VariantSettings,
    manifest: Manifest,
    *,
    name: str,
    ref: float | None,
) -> Measurement:
    return measure_bundle(
        path,
        evaluation.texts,
        evaluation.targets,
        manifest.task,
        manifest.labels,
        reference=ref,
        max_drop=settings.max_drop,
        latency_runs=settings.latency_runs,
        throughput_batches=settings.throughput_batches,
        name=name,
        intra_op_threads=settings.intra_op_threads,
        selected_on=evaluation.described,
        test=evaluation.test,
    )


def write_variant(
    src: Source,
    graph: Path,
    variant: dict[str, Any],
    parity: dict[str, Any],
    evaluation: EvalData,
    settings: VariantSettings,
) -> Measurement:
    """Stage the variant as a bundle, measure it, then write it to the repository for good."""
    ref = src.reference
    manifest = replace(
        ref.manifest,
        variant=variant,
        parity=parity,
        metrics=None,
        modelyard_version=modelyard.__version__,
        created_at=now_iso(),
    )
    files = {
        manifest.model_file: graph,
        manifest.tokenizer_file: ref.path / manifest.tokenizer_file,
    }
    # a repository of its own inside the model's directory (not a version, never served)
    with staging_dir(settings.repo / manifest.name) as staging:
        staged = write_bundle(staging, manifest, files)
        m = measure_variant(
            staged.path,
            evaluation,
            settings,
            manifest,
            name=variant["name"],
            ref=settings.reference_score,
        )
    final = replace(
        manifest,
        metrics=m.manifest_metrics(),
        variant={**variant, "measured": m.manifest_record(), "rejected": m.rejected},
    )
    bundle = write_bundle(settings.repo, final, files)
    m.bundle, m.version = str(bundle.path), bundle.version
    status = f"REJECTED ({m.rejected})" if m.rejected else "ok"
    log.info(
        "compress: %s -> %s (%.2f MB, %s %.4f, %s)",
        m.name,
        bundle.path,
        m.size_mb,
        "score",
        m.score,
        status,
    )
    return m
