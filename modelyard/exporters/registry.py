"""``export(run, format=...)``: the bundle formats, each a name mapped to its exporter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.bundle import Bundle
from modelyard.config import REFERENCE_FORMAT
from modelyard.errors import BundleError
from modelyard.exporters.onnx import export_onnx
from modelyard.exporters.tflite import export_tflite
from modelyard.runs import Run

# bundle format (config.EXPORT_FORMATS: tests/test_registries.py) -> exporter(run, *, repo, which,
# name, ...)
EXPORTERS: dict[str, Callable[..., Bundle]] = {"onnx": export_onnx, "tflite": export_tflite}


def export(
    run: Run | str | Path,
    *,
    format: str = REFERENCE_FORMAT,
    repo: str | Path | None = None,
    which: str = "best",
    name: str | None = None,
    **options: Any,
) -> Bundle:
    """Export a run's checkpoint as a new bundle version ``REPO/NAME/VERSION/``.

    Args:
        run: a :class:`modelyard.runs.Run` or its directory (``runs/NAME``).
        format: the bundle format, a key of :data:`EXPORTERS` (``onnx``, ``tflite``).
        repo: the model repository; default: the run config's ``export.repo`` (``models``).
        which: the checkpoint, ``best`` or ``last``.
        name: the model name in the repository; default: the run's name.
        options: format-specific settings (``tflite``: ``quantize``, ``batch_size``).

    Returns:
        The written :class:`Bundle` (its ``manifest.parity`` holds the measured difference).

    Raises:
        BundleError: the format is unknown, the graph is not self-contained, or the exported
            model disagrees with torch beyond the tolerance; no bundle is left behind.
        RunError: the run directory is missing or incomplete.
    """
    exporter = EXPORTERS.get(format)
    if exporter is None:
        raise BundleError(f"unknown export format {format!r}; known: {', '.join(EXPORTERS)}")
    run = run if isinstance(run, Run) else Run.load(run)
    return exporter(run, repo=repo, which=which, name=name, **options)
