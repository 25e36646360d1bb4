"""A generation run's variants: one GGUF bundle per type its config's ``compress.gguf`` names
(F16, Q8_0, Q4_0 by default), for ``modelyard run`` (:data:`modelyard.compress.FORMAT_VARIANTS`)
and ``modelyard compress RUN``. Each is exported through the parity gate and scored against the
run (:func:`modelyard.exporters.gguf_bundle.export_gguf_bundle`), timed through llama.cpp
(:func:`modelyard.measure.measure_generative_bundle`) and written as the next version with its
measurements. A type that fails its gate is a note, not a crash: the others still compete.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from modelyard.bundle import write_bundle
from modelyard.compress.sources import EvalData, FormatRequest
from modelyard.errors import BundleError, ModelyardError
from modelyard.measure import Measurement, measure_generative_bundle
from modelyard.runs import Run
from modelyard.staging import staging_dir

log = logging.getLogger("modelyard.pipeline")

SPEED_REQUESTS = 8  # validation records each variant is timed on


def gguf_variants(request: FormatRequest) -> list[Measurement]:
    """A generation run's GGUF bundles, one per type ``config.compress.gguf`` names (F16, Q8_0,
    Q4_0 by default): each exported through the parity gate and scored against the run
    (:func:`modelyard.exporters.gguf_bundle.export_gguf_bundle`), timed through llama.cpp
    (:func:`modelyard.measure.measure_generative_bundle`) and written as the next version with
    its measurements. A type that fails its gate is a note: the others still compete."""
    from modelyard.exporters import gguf_bundle

    run, config = request.run, request.config
    records = gguf_bundle.scoring_data(run).validation[:SPEED_REQUESTS]
    threads = gguf_bundle.ENGINE_THREADS
    requests = [r.messages or str(r.text) for r in records]
    measured: list[Measurement] = []
    for quantization in config.compress.gguf:
        label = f"gguf-{quantization}"
        log.info("run %s: exporting and scoring %s", config.name, label)
        # staged in a repository of its own inside the model's directory, never served
        with staging_dir(Path(config.export.repo) / config.name) as staging:
            try:
                staged = gguf_bundle.export_gguf_bundle(
                    run, repo=staging, quantize=quantization, threads=threads
                )
                m = measure_generative_bundle(staged.path, requests, threads=threads)
            except ModelyardError as exc:
                request.notes.append(f"{label} not built: {exc}")
                continue
            variant = {**staged.manifest.variant, "measured": m.manifest_record()}
            manifest = replace(staged.manifest, variant=variant)
            files = {name: staged.path / name for name in staged.manifest.files}
            bundle = write_bundle(config.export.repo, manifest, files)
        m.bundle, m.version = str(bundle.path), bundle.version
        measured.append(m)
    return measured


def compress_generative(
    run_dir: str | Path, *, repo: str | Path | None = None
) -> list[Measurement]:
    """``modelyard compress RUN`` for a generation run: the GGUF variants of its config's
    ``compress.gguf``, each gated, scored, timed and written as a version, as ``run`` builds
    them; a type that fails is logged.

    Args:
        run_dir: the generation run.
        repo: where the bundles go; default: the run config's ``export.repo``.

    Raises:
        BundleError: no variant could be built (each type's reason given).
    """
    run = Run.load(run_dir)
    config = run.config
    if repo is not None:
        export = config.export.model_copy(update={"repo": str(repo)})
        config = config.model_copy(update={"export": export})
    notes: list[str] = []
    data = EvalData([], np.empty(0), str(config.data.validation or config.data.train))
    measured = gguf_variants(FormatRequest(run, config, data, [], notes=notes))
    for note in notes:
        log.warning("%s", note)
    if not measured:
        raise BundleError(f"{run.dir}: no GGUF variant was built: " + "; ".join(notes))
    return measured
