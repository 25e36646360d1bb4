"""Score a bundle on labelled data with the same metrics as the training road (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.data import LabelSpace, read_table
from modelyard.runtime.predictor import Predictor, load_predictor
from modelyard.tasks import compute_metrics


def evaluate_bundle(
    path: str | Path | Predictor,
    data: str | Path,
    *,
    version: int | None = None,
    text: str | None = None,
    label: str | None = None,
    skip_bad_rows: bool = False,
) -> dict[str, float]:
    """Predict a labelled file with a bundle and compute the task's metrics.

    Args:
        path: ``REPO/NAME`` (latest version, or ``version``), ``REPO/NAME/VERSION``, or an
            already loaded :class:`Predictor`.
        data: a CSV/TSV/JSONL/Parquet file with a text and a label column.
        version: which version of ``REPO/NAME``; ``None`` means the latest.
        text: the text column; default: the one the bundle was trained with (else ``text``).
        label: the label column; default: the one the bundle was trained with (else ``label``).
        skip_bad_rows: skip malformed rows instead of failing on the first.

    Returns:
        Metric name -> value, as :func:`modelyard.metrics.compute_metrics` gives for the task.

    Raises:
        BundleError: the bundle is missing or corrupted.
        DataError: the data file is missing, malformed, or holds a label the bundle lacks.
    """
    predictor = path if isinstance(path, Predictor) else load_predictor(path, version)
    manifest = predictor.manifest
    data_cfg: dict[str, Any] = (manifest.config or {}).get("data") or {}
    table = read_table(
        data,
        text=text or data_cfg.get("text", "text"),
        label=label or data_cfg.get("label", "label"),
        encoding=data_cfg.get("encoding", "utf-8"),
        skip_bad_rows=skip_bad_rows,
    )
    # the bundle's own classes, in its output order: a label it does not know is an error
    space = LabelSpace(
        task=manifest.task,
        labels=list(manifest.labels),
        delimiter=data_cfg.get("label_delimiter"),
    )
    targets = space.encode(table.raw_labels or [], path=table.path, lines=table.lines)
    scores = predictor.infer(predictor.encode(table.texts))
    return compute_metrics(
        manifest.task,
        targets,
        scores,
        manifest.labels,
        threshold=manifest.postprocess.threshold,
    )
