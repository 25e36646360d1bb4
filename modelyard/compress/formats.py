"""Each export format's variants for ``modelyard run``, looked up by the format's name.

:data:`FORMAT_VARIANTS` maps every name of :data:`modelyard.config.EXPORT_FORMATS` to the
function that exports, measures and writes that format's variants: for the reference format, the
fp32 bundle and everything ``compress:`` asks for (:func:`modelyard.compress.compress`); for
TFLite, fp32 and each mode its exporter applies itself
(:data:`modelyard.config.EXPORT_QUANTIZE_MODES`); for GGUF, each type ``compress.gguf`` names
(a generation run's). A format that cannot be built (TFLite without litert-torch) is a note,
not a crash, so the other targets still get their answer. Exporters are imported when a format
is built: listing the formats needs no torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from modelyard.bundle import Bundle, write_bundle
from modelyard.compress.generative import gguf_variants
from modelyard.compress.sources import FormatRequest
from modelyard.compress.variants import compress
from modelyard.config import EXPORT_QUANTIZE_MODES, REFERENCE_FORMAT, Config, formats_for
from modelyard.errors import ModelyardError
from modelyard.measure import Measurement, measure_bundle
from modelyard.staging import staging_dir
from modelyard.tasks import get_task

log = logging.getLogger("modelyard.pipeline")


def wanted_formats(config: Config) -> list[str]:
    """The reference format (always built when it carries the task's models), then each other
    format that ``export.formats`` or a target names, in the order of
    :data:`~modelyard.config.EXPORT_FORMATS`. A generative task's formats are its own
    (:data:`~modelyard.config.GENERATIVE_FORMATS`): its reference is the run itself."""
    asked = {*config.export.formats, *(t.format for t in config.targets.values())}
    valid = formats_for(get_task(config.task).generative)
    first = [REFERENCE_FORMAT] if REFERENCE_FORMAT in valid else []
    return [*first, *(f for f in valid if f not in first and f in asked)]


def onnx_variants(request: FormatRequest) -> list[Measurement]:
    """The fp32 ONNX reference and the variants ``config.compress`` asks for, all measured.

    :func:`modelyard.compress.compress` exports and measures the fp32 reference itself (first
    in its list) on the same split; without compression settings the reference is exported and
    measured here.
    """
    run, config, data = request.run, request.config, request.data
    cfg = config.compress
    if cfg.prune is None and cfg.clip is None and not cfg.quantize:
        from modelyard.exporters import export

        log.info("run %s: exporting fp32 ONNX", config.name)
        fp32 = export(run, repo=config.export.repo)
        log.info("run %s: measuring fp32 on %s", config.name, data.source)
        measured = measure_bundle(
            fp32.path,
            data.texts,
            data.targets,
            run.task,
            request.labels,
            selected_on=data.described,
            test=data.test,
        )
        return [measured]
    log.info("run %s: exporting and compressing (%s)", config.name, compress_label(config))
    return compress(
        run.dir,
        prune=cfg.prune,
        prune_kind=cfg.prune_kind,
        finetune_epochs=cfg.finetune_epochs,
        quantize=list(cfg.quantize),
        clip=cfg.clip,
        repo=config.export.repo,
        max_accuracy_drop=cfg.max_accuracy_drop,
    )


def tflite_variants(request: FormatRequest) -> list[Measurement]:
    """Export and measure TFLite bundles: fp32, then each quantization mode LiteRT supports.

    A missing litert-torch, a failed conversion or a mode LiteRT cannot do is a note, not a
    failure of the road: the ONNX targets still get their answer.
    """
    config, notes = request.config, request.notes
    try:
        from modelyard.exporters.tflite import export_tflite
    except ImportError as exc:
        notes.append(f"no TFLite variants: {_missing(exc)}")
        return []

    supported = EXPORT_QUANTIZE_MODES["tflite"]
    unsupported = [q for q in config.compress.quantize if q not in supported]
    if unsupported:
        notes.append(
            f"no TFLite {', '.join(unsupported)} variant: the LiteRT exporter supports "
            f"{', '.join(supported) or 'fp32 only'}"
        )
    measured: list[Measurement] = []
    for mode in [None, *(q for q in config.compress.quantize if q in supported)]:
        label = f"tflite-{mode or 'fp32'}"
        log.info("run %s: exporting %s", config.name, label)
        # staged in a repository of its own inside the model's directory, never served
        with staging_dir(Path(config.export.repo) / config.name) as staging:
            try:
                staged = export_tflite(request.run, repo=staging, quantize=mode)
            except ImportError as exc:
                notes.append(f"no TFLite variants: {_missing(exc)}")
                return measured
            except ModelyardError as exc:
                notes.append(f"{label} not built: {exc}")
                if mode is None:  # without the fp32 conversion no quantized one will work either
                    return measured
                continue
            try:
                measured.append(write_measured(staged, request))
            except ModelyardError as exc:
                notes.append(f"{label} built but not measured, so not written: {exc}")
    return measured


# bundle format -> the function that builds, measures and writes its variants
FORMAT_VARIANTS: dict[str, Callable[[FormatRequest], list[Measurement]]] = {
    "onnx": onnx_variants,
    "tflite": tflite_variants,
    "gguf": gguf_variants,
}


def write_measured(staged: Bundle, request: FormatRequest) -> Measurement:
    """Measure a staged bundle, then write it for good with its measurements and, past the
    accuracy budget, its rejected mark in the manifest (as compress writes ONNX variants)."""
    config, data = request.config, request.data
    m = measure_bundle(
        staged.path,
        data.texts,
        data.targets,
        str(config.task),
        request.labels,
        reference=request.reference,
        max_drop=config.compress.max_accuracy_drop,
        selected_on=data.described,
        test=data.test,
    )
    manifest = replace(
        staged.manifest,
        metrics=m.manifest_metrics(),
        variant={
            **staged.manifest.variant,
            "measured": m.manifest_record(),
            "rejected": m.rejected,
        },
    )
    files = {name: staged.path / name for name in staged.manifest.files}
    bundle = write_bundle(config.export.repo, manifest, files)
    m.bundle, m.version = str(bundle.path), bundle.version
    return m


def compress_label(config: Config) -> str:
    """What ``compress:`` asks for, in a few words (``prune 0.5 unstructured; quantize fp16``)."""
    cfg = config.compress
    parts = []
    if cfg.prune is not None:
        parts.append(f"prune {cfg.prune:g} {cfg.prune_kind}")
    if cfg.clip is not None:
        parts.append(f"clip {cfg.clip:g}")
    if cfg.quantize:
        parts.append("quantize " + ", ".join(cfg.quantize))
    return "; ".join(parts)


def _missing(exc: ImportError) -> str:
    name = getattr(exc, "name", None) or ""
    if "litert" in name or "ai_edge" in name or "litert" in str(exc):
        return "litert-torch is not installed (pip install 'modelyard[mobile]')"
    return f"the TFLite exporter could not be imported: {exc}"
