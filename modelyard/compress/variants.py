"""``compress``: build every asked-for variant of a model as a new bundle version, and measure it.

From a run (``runs/NAME``) the fp32 reference is the run's ONNX export (an existing export of
the same checkpoint is reused); pruning happens in torch and the pruned model is exported and
checked against torch like any export. From a bundle (``models/NAME``) only graph-level
variants can be built: clipping and quantization.

Each variant becomes its own bundle version whose manifest records what was done (``variant``:
name, pruning, clip, quantization, the measurements, and whether it was rejected). Before it is
written, the variant is staged as a bundle in a temporary repository and measured through the
runtime on the test texts, so its manifest carries its own test metrics.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import modelyard
from modelyard.compress.clip import ClipReport, ClipSpec, clip_weights, parse_clip
from modelyard.compress.quantize import QUANTIZERS, CalibrationData, check_modes, preprocess
from modelyard.errors import BundleError, ConfigError, DataError
from modelyard.export.bundle import (
    Bundle,
    Manifest,
    list_versions,
    now_iso,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from modelyard.measure import Measurement, measure_bundle

if TYPE_CHECKING:
    from modelyard.config import Config
    from modelyard.train import Run

log = logging.getLogger("modelyard.compress")

PRUNE_KINDS = ("unstructured", "structured")
PARITY_TEXTS = 64


@dataclass
class EvalData:
    """The labelled texts every variant is scored on, and the training texts for calibration."""

    texts: list[str]
    targets: np.ndarray
    source: str
    train_texts: list[str] = field(default_factory=list)


@dataclass
class _Source:
    run: Run | None
    reference: Bundle
    config: Config | None
    repo: Path


@dataclass
class _Base:
    """A float graph the quantized variants start from: the fp32 export or a pruned one."""

    name: str  # "" for the fp32 reference, else e.g. "pruned50"
    graph: Path
    version: int
    pruning: dict[str, Any] | None = None


@dataclass
class _Settings:
    repo: Path
    max_drop: float
    latency_runs: int
    throughput_batches: int
    intra_op_threads: int | None
    reference_score: float = float("nan")


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
    src = _open_source(Path(source), repo)
    if prune is not None and src.run is None:
        raise ConfigError(
            f"{source}: pruning needs the training run (runs/NAME): a bundle holds no torch model"
        )
    manifest = src.reference.manifest
    evaluation = eval_data(src.config, manifest, data)
    settings = _Settings(
        repo=src.repo,
        max_drop=max_accuracy_drop,
        latency_runs=latency_runs,
        throughput_batches=throughput_batches,
        intra_op_threads=intra_op_threads,
    )
    log.info("compress: measuring the fp32 reference %s", src.reference.path)
    reference = _measure(src.reference.path, evaluation, settings, manifest, name="fp32", ref=None)
    settings.reference_score = reference.score
    results = [reference]
    calibration = None
    if "int8-static" in modes:
        calibration = _calibration(src, evaluation, calibration_texts)
    with tempfile.TemporaryDirectory(prefix="modelyard-compress-") as tmp:
        work = Path(tmp)
        bases = [_Base("", src.reference.path / manifest.model_file, src.reference.version)]
        if prune is not None and src.run is not None:
            base, measured = _pruned_base(
                src, prune, prune_kind, finetune_epochs, evaluation, settings, work
            )
            bases.append(base)
            results.append(measured)
        for base in bases:
            results += _graph_variants(
                src, base, modes, clip_spec, calibration, evaluation, settings, work
            )
    return results


# ------------------------------------------------------------------------------------ source
def _open_source(path: Path, repo: str | Path | None) -> _Source:
    # the same test as modelyard.train.is_run_dir, without importing torch for a bundle source
    if (path / "run.json").is_file() and (path / "config.yaml").is_file():
        from modelyard.train import Run

        run = Run.load(path)
        target = Path(repo) if repo is not None else Path(run.config.export.repo)
        reference = _run_reference(run, target)
        return _Source(run, reference, run.config, target)
    bundle = _fp32_bundle(path)
    config = _manifest_config(bundle.manifest)
    target = Path(repo) if repo is not None else bundle.path.parent.parent
    return _Source(None, bundle, config, target)


def is_plain_fp32(manifest: Manifest) -> bool:
    """True for an ONNX bundle nobody has pruned, clipped or quantized (a plain export)."""
    v = manifest.variant or {}
    return (
        manifest.format == "onnx"
        and not v.get("quantization")
        and not v.get("pruning")
        and not v.get("clip")
    )


def _fp32_bundle(path: Path) -> Bundle:
    """The named version, or the latest plain fp32 version of ``REPO/NAME``."""
    if (path / "manifest.json").is_file():
        bundle = verify_bundle(path)
        if not is_plain_fp32(bundle.manifest):
            raise BundleError(
                f"{path}: is a compressed variant ({bundle.manifest.variant.get('name')}); "
                "compress an fp32 ONNX bundle or its run"
            )
        return bundle
    for version in reversed(list_versions(path)):
        try:
            manifest = read_manifest(path / str(version))
        except BundleError:
            continue
        if is_plain_fp32(manifest):
            return verify_bundle(path, version)
    raise BundleError(f"{path}: no fp32 ONNX bundle (nor a run directory) to compress")


def _manifest_config(manifest: Manifest) -> Config | None:
    from modelyard.config import validate_config

    if not manifest.config:
        return None
    try:
        return validate_config(dict(manifest.config), "manifest.json config")
    except ConfigError:
        return None


def _run_reference(run: Run, repo: Path) -> Bundle:
    """An fp32 export of the run's best checkpoint: reused when one is newer than the
    checkpoint, else exported now."""
    from modelyard.export.onnx import export

    name = run.config.name
    checkpoint = run.paths.weights("best")
    stamp = int(checkpoint.stat().st_mtime) if checkpoint.is_file() else None
    model_dir = repo / name
    for version in reversed(list_versions(model_dir)):
        try:
            manifest = read_manifest(model_dir / str(version))
        except BundleError:
            continue
        if (
            stamp is not None
            and is_plain_fp32(manifest)
            and (manifest.variant or {}).get("checkpoint", "best") == "best"
            and manifest.source is not None
            and Path(manifest.source).resolve() == run.dir.resolve()
            and _timestamp(manifest.created_at) >= stamp
        ):
            log.info("compress: reusing the fp32 export %s", model_dir / str(version))
            return verify_bundle(model_dir, version)
    log.info("compress: exporting %s to fp32 ONNX", run.dir)
    return export(run, repo=repo)


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return -math.inf


# -------------------------------------------------------------------------------------- data
def eval_data(config: Config | None, manifest: Manifest, data: str | Path | None) -> EvalData:
    """The labelled texts variants are measured on, encoded in the bundle's label order.

    Args:
        config: the run's (or the bundle's recorded) config; ``None`` when unknown.
        manifest: the reference bundle's manifest.
        data: a labelled file; default: the config's test file, else its validation split.

    Raises:
        DataError: no data given and none in the config, or labels the bundle does not know.
    """
    from modelyard.data import LabelSpace, load_splits, read_table

    if data is not None:
        data_cfg: dict[str, Any] = (manifest.config or {}).get("data") or {}
        table = read_table(
            data,
            text=data_cfg.get("text", "text"),
            label=data_cfg.get("label", "label"),
            encoding=data_cfg.get("encoding", "utf-8"),
        )
        space = LabelSpace(
            task=manifest.task,
            labels=list(manifest.labels),
            delimiter=data_cfg.get("label_delimiter"),
        )
        targets = space.encode(table.raw_labels or [], path=table.path, lines=table.lines)
        return EvalData(list(table.texts), targets, str(data))
    if config is None:
        raise DataError("no test data: the bundle records no config to find it in; pass data=FILE")
    splits = load_splits(config)
    if list(splits.labels.labels) != list(manifest.labels):
        raise DataError(
            f"the data's labels {splits.labels.labels} differ from the bundle's {manifest.labels}"
        )
    examples = splits.test if splits.test is not None else splits.validation
    return EvalData(
        list(examples.texts), examples.targets, str(examples.source), list(splits.train.texts)
    )


def _calibration(src: _Source, evaluation: EvalData, limit: int) -> CalibrationData:
    """A seeded sample of training texts, tokenized by the bundle's tokenizer."""
    from tokenizers import Tokenizer

    from modelyard.tokenize import encode

    texts = evaluation.train_texts
    if not texts and src.config is not None:
        from modelyard.data import load_splits

        texts = list(load_splits(src.config).train.texts)
    if not texts:
        raise DataError("int8-static needs training texts to calibrate on; none were found")
    seed = src.config.seed if src.config is not None else 0
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(texts), size=min(limit, len(texts)), replace=False)
    manifest = src.reference.manifest
    tokenizer = Tokenizer.from_file(str(src.reference.path / manifest.tokenizer_file))
    seqs = encode(tokenizer, [texts[i] for i in sorted(pick)])
    return CalibrationData.from_sequences(
        seqs,
        pad_id=manifest.pad_id,
        side=manifest.padding_side,
        input_names=[spec.name for spec in manifest.inputs],
    )


# ---------------------------------------------------------------------------------- variants
def _pruned_base(
    src: _Source,
    amount: float,
    kind: str,
    finetune_epochs: int,
    evaluation: EvalData,
    settings: _Settings,
    work: Path,
) -> tuple[_Base, Measurement]:
    """Prune (and fine-tune) the run's model, export it, check parity, write and measure it."""
    from modelyard.compress.prune import finetune, prune_model
    from modelyard.train import load_model

    run = src.run
    if run is None:  # checked by compress(); keeps the type checker informed
        raise ConfigError("pruning needs a training run")
    result = prune_model(load_model(run, "best"), amount, kind)
    finetune(result, run, finetune_epochs)
    result.model.eval()
    report = result.report
    log.info("compress: pruned %s (%s), sparsity %.3f", run.dir, kind, report.sparsity)
    graph_dir = work / f"pruned-{kind}"
    graph_dir.mkdir()
    graph = graph_dir / "model.onnx"
    parity = _export_torch(result.model, run, src.reference.manifest, graph)
    name = f"pruned{round(amount * 100)}" + ("-structured" if kind == "structured" else "")
    variant = _variant(src, name, pruning=report.to_dict())
    measured = _write_variant(src, graph, variant, parity, evaluation, settings)
    return _Base(name, graph, measured.version, report.to_dict()), measured


def _export_torch(model: Any, run: Run, manifest: Manifest, graph: Path) -> dict[str, Any]:
    """Export a modified torch model the way :func:`modelyard.export.export` does.

    Raises:
        BundleError: ONNX Runtime differs from torch beyond ``export.parity_atol``.
    """
    from tokenizers import Tokenizer

    from modelyard.export.onnx import (
        _example_batch,
        check_parity,
        export_graph,
        parity_sequences,
    )
    from modelyard.tokenize import tokenizer_info

    tokenizer = Tokenizer.from_file(str(run.paths.tokenizer))
    info = tokenizer_info(tokenizer)
    seqs = parity_sequences(run, tokenizer, info.vocab_size, manifest.max_length)
    example = _example_batch(seqs, pad_id=manifest.pad_id, side=manifest.padding_side)
    export_graph(model, example.ids, example.mask, graph, opset=run.config.export.opset)
    parity = check_parity(
        model,
        graph,
        seqs,
        pad_id=manifest.pad_id,
        side=manifest.padding_side,
        atol=run.config.export.parity_atol,
    )
    if not parity.ok:
        raise BundleError(
            f"{run.dir}: pruned model's ONNX export refused: ONNX Runtime differs from torch by "
            f"{parity.max_abs_diff:.3g} (max abs), over export.parity_atol={parity.atol:g}"
        )
    return {
        "max_abs_diff": parity.max_abs_diff,
        "atol": parity.atol,
        "num_texts": parity.num_texts,
        "batch_sizes": parity.batch_sizes,
        "compared": "raw outputs, pruned torch model vs onnxruntime (CPU)",
    }


def _graph_variants(
    src: _Source,
    base: _Base,
    modes: list[str],
    clip_spec: ClipSpec | None,
    calibration: CalibrationData | None,
    evaluation: EvalData,
    settings: _Settings,
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
        variant = _variant(src, "+".join(prefix), base=base, clip=clip_dict)
        parity = _raw_parity(base.graph, graph, src.reference, evaluation)
        out.append(_write_variant(src, graph, variant, parity, evaluation, settings))
    for mode in modes:
        target = folder / f"{mode}.onnx"
        log.info("compress: %s", "+".join([*prefix, mode]))
        try:
            details = QUANTIZERS[mode](graph, target, calibration=calibration)
        except (BundleError, ConfigError):
            raise
        except Exception as exc:  # ORT's quantizers raise many types
            raise BundleError(f"{mode} quantization failed: {type(exc).__name__}: {exc}") from exc
        variant = _variant(
            src, "+".join([*prefix, mode]), base=base, clip=clip_dict, quantization=details
        )
        parity = _raw_parity(base.graph, target, src.reference, evaluation)
        out.append(_write_variant(src, target, variant, parity, evaluation, settings))
    return out


def _clipped(graph: Path, spec: ClipSpec, target: Path) -> tuple[Path, ClipReport]:
    import onnx

    model = onnx.load(str(graph))
    report = clip_weights(model, spec)
    onnx.save(model, str(target))
    log.info("compress: %s clipped %d of %d weights", spec.name, report.clipped, report.total)
    return target, report


def _variant(
    src: _Source,
    name: str,
    *,
    base: _Base | None = None,
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


def _raw_parity(base: Path, graph: Path, ref: Bundle, evaluation: EvalData) -> dict[str, Any]:
    """Largest raw-output difference between the base graph and the variant on test texts."""
    from tokenizers import Tokenizer

    from modelyard.runtime.backends import ONNXBackend
    from modelyard.tokenize import encode, pad_batch

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


# ------------------------------------------------------------------------- write and measure
def _measure(
    path: Path,
    evaluation: EvalData,
    settings: _Settings,
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
    )


def _write_variant(
    src: _Source,
    graph: Path,
    variant: dict[str, Any],
    parity: dict[str, Any],
    evaluation: EvalData,
    settings: _Settings,
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
    with tempfile.TemporaryDirectory(prefix="modelyard-stage-") as staging:
        staged = write_bundle(staging, manifest, files)
        m = _measure(
            staged.path,
            evaluation,
            settings,
            manifest,
            name=variant["name"],
            ref=settings.reference_score,
        )
    measured = {
        "size_mb": m.size_mb,
        "p50_ms": m.p50_ms,
        "p99_ms": m.p99_ms,
        "throughput": m.throughput,
        "score": m.score,
        "drop": m.drop,
        "data": evaluation.source,
        "num_texts": len(evaluation.texts),
    }
    final = replace(
        manifest,
        metrics={k: v for k, v in m.metrics.items() if math.isfinite(v)},
        variant={**variant, "measured": _finite(measured), "rejected": m.rejected},
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


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }
