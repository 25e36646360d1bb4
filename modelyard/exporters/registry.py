"""``export(run, format=...)``: the bundle formats, each a name mapped to its exporter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.bundle import Bundle
from modelyard.config import (
    EXPORT_QUANTIZE_MODES,
    GENERATIVE_FORMATS,
    REFERENCE_FORMAT,
    formats_for,
)
from modelyard.errors import BundleError
from modelyard.exporters.gguf import GGUFFile, write_gguf
from modelyard.exporters.gguf_bundle import export_gguf_bundle
from modelyard.exporters.onnx import export_onnx
from modelyard.exporters.tflite import export_tflite
from modelyard.runs import Run
from modelyard.staging import staging_dir
from modelyard.tasks import get_task

# bundle format (config.EXPORT_FORMATS: tests/test_registries.py) -> exporter(run, *, repo, which,
# name, ...)
EXPORTERS: dict[str, Callable[..., Bundle]] = {
    "onnx": export_onnx,
    "tflite": export_tflite,
    "gguf": export_gguf_bundle,
}


def export(
    run: Run | str | Path,
    *,
    format: str | None = None,
    repo: str | Path | None = None,
    which: str = "best",
    name: str | None = None,
    **options: Any,
) -> Bundle:
    """Export a run's checkpoint as a new bundle version ``REPO/NAME/VERSION/``.

    Args:
        run: a :class:`modelyard.runs.Run` or its directory (``runs/NAME``).
        format: the bundle format, a key of :data:`EXPORTERS`: ``onnx`` (the default) or
            ``tflite`` for runs that score texts; ``gguf`` (the default) for generation runs.
        repo: the model repository; default: the run config's ``export.repo`` (``models``).
        which: the checkpoint, ``best`` or ``last``.
        name: the model name in the repository; default: the run's name.
        options: format-specific settings (``tflite``: ``quantize``, ``batch_size``;
            ``gguf``: ``quantize``, ``max_accuracy_drop``, ``max_perplexity_rise``, ``threads``:
            :func:`modelyard.exporters.gguf_bundle.export_gguf_bundle`).

    Returns:
        The written :class:`Bundle` (its ``manifest.parity`` holds the measured difference).

    Raises:
        BundleError: the format is unknown or does not carry the run's kind of model, the graph
            is not self-contained, or the exported model disagrees with torch beyond the
            tolerance; no bundle is left behind.
        RunError: the run directory is missing or incomplete.
    """
    if format is not None and format not in EXPORTERS:
        raise BundleError(f"unknown export format {format!r}; known: {', '.join(EXPORTERS)}")
    if format is not None and options.get("quantize") and not EXPORT_QUANTIZE_MODES[format]:
        takers = [f for f, modes in EXPORT_QUANTIZE_MODES.items() if modes]
        raise BundleError(
            f"quantize applies to {', '.join(takers)}; "
            f"for {REFERENCE_FORMAT.upper()} use `modelyard compress`"
        )
    run = run if isinstance(run, Run) else Run.load(run)
    generative = get_task(run.task).generative
    format = format or formats_for(generative)[0]
    if (format in GENERATIVE_FORMATS) != generative:
        valid = ", ".join(formats_for(generative))
        if not generative:
            raise BundleError(
                f"{run.dir} is a {run.task} run; {format} carries generative models: export "
                f"it as {valid}"
            )
        raise BundleError(
            f"{run.dir} is a {run.task} run; {format} carries models that score texts: export "
            f"it as {valid} (llama.cpp; ONNX for onnxruntime-genai is not built, see "
            "docs/benchmarks.md), or its merged model with `modelyard export RUN --merged DIR`"
        )
    return EXPORTERS[format](run, repo=repo, which=which, name=name, **options)


def export_merged(run: Run | str | Path, directory: str | Path, *, which: str = "best") -> Path:
    """Write a generative run's model, its trained weights merged into the base (LoRA adapters
    folded in), as a Hugging Face directory: safetensors, config.json, the tokenizer and its chat
    template. Written in a staging directory and renamed into place.

    Raises:
        BundleError: the run's task does not generate text.
        RunError: the run or its checkpoint is missing.
    """
    run = run if isinstance(run, Run) else Run.load(run)
    if not get_task(run.task).generative:
        raise BundleError(f"{run.dir} is a {run.task} run; --merged is for generation runs")
    from modelyard.training.generative import load_generative_run

    _, loaded = load_generative_run(run.dir, which)
    return loaded.model.merge_and_save(directory)


def export_gguf(
    run: Run | str | Path, path: str | Path, *, quantization: str = "f16", which: str = "best"
) -> GGUFFile:
    """Write a generative run's merged model as one GGUF file (llama.cpp, Ollama, LM Studio):
    the merged Hugging Face directory of :func:`export_merged`, staged beside ``path`` and
    removed after, converted by :func:`modelyard.exporters.gguf.write_gguf`.

    Args:
        run: a generation run or its directory.
        path: the ``.gguf`` file, written atomically.
        quantization: ``f32``, ``f16``, ``q8_0`` or ``q4_0`` (``exporters.gguf.GGUF_TYPES``).
        which: the checkpoint, ``best`` or ``last``.

    Raises:
        BundleError: not a generation run, or a model GGUF export cannot write faithfully.
        RunError: the run or its checkpoint is missing.
    """
    run, path = run if isinstance(run, Run) else Run.load(run), Path(path)
    with staging_dir(path.parent) as scratch:
        merged = export_merged(run, scratch / "merged", which=which)
        return write_gguf(merged, path, quantization=quantization, name=str(run.config.name))
