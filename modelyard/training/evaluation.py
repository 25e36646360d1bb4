"""Evaluate a trained model on labelled data: metrics, per-class report, plots.

``evaluate(path)`` scores a training run (``runs/NAME``, with run.json and config.yaml) with its
torch model. Bundles are scored without torch by :func:`modelyard.runtime.evaluate_bundle`
(``modelyard evaluate`` picks one or the other by what the path holds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.atomic import atomic_write_text
from modelyard.data import load_splits, read_table
from modelyard.errors import DataError, RunError
from modelyard.metrics import (
    ClassReport,
    format_class_table,
    format_with_interval,
    proportion_interval,
)
from modelyard.plots import plot_confusion_matrix, plot_learning_curves
from modelyard.runs import Run, is_run_dir
from modelyard.tasks import get_task
from modelyard.training.predict import predict_texts


@dataclass
class EvalResult:
    """What an evaluation measured and where it wrote its files.

    Attributes:
        metrics: task metrics (see :meth:`modelyard.tasks.Task.metrics`).
        report: per-class precision / recall / F1 / support (empty for regression).
        confusion: ``(C, C)`` counts, rows = true class (binary / multiclass), else ``None``.
        num_examples: how many labelled texts were scored.
        data: where the texts came from.
        checkpoint: which weights were scored (``best`` or ``last``).
        out_dir: the directory holding the files below.
        files: name → path of every file written (metrics.json, report.txt, PNGs).
    """

    metrics: dict[str, float]
    report: list[ClassReport]
    confusion: np.ndarray | None
    num_examples: int
    data: str
    checkpoint: str
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def evaluate(
    run_or_path: Run | str | Path,
    data: str | Path | None = None,
    *,
    which: str = "best",
    out_dir: str | Path | None = None,
) -> EvalResult:
    """Score a trained model on labelled data and write metrics, a report and plots.

    Args:
        run_or_path: a :class:`~modelyard.training.Run` or a run directory (``runs/NAME``).
        data: a labelled file (CSV, TSV, JSONL, Parquet) with the run's text and label columns;
            default: the run's test file, else its validation split.
        which: the run checkpoint to score, ``best`` or ``last``.
        out_dir: where to write; default ``runs/NAME/eval`` for the run's own test data and
            ``runs/NAME/eval/<file stem>`` for any other file.

    Returns:
        An :class:`EvalResult`.

    Raises:
        RunError: ``run_or_path`` is not a run directory.
        DataError: the data file is missing or holds bad rows or unknown labels.
    """
    if isinstance(run_or_path, Run):
        return _evaluate_run(run_or_path, data, which=which, out_dir=out_dir)
    path = Path(run_or_path)
    if is_run_dir(path):
        return _evaluate_run(Run.load(path), data, which=which, out_dir=out_dir)
    if not path.exists():
        raise RunError(f"{path}: not found; expected a run directory such as runs/NAME")
    raise RunError(f"{path}: not a run directory (run.json and config.yaml are missing)")


def _evaluate_run(
    run: Run, data: str | Path | None, *, which: str, out_dir: str | Path | None
) -> EvalResult:
    cfg = run.config.data
    if data is not None:
        table = read_table(
            data,
            text=cfg.text,
            label=cfg.label,
            format=cfg.format,
            encoding=cfg.encoding,
            skip_bad_rows=cfg.skip_bad_rows,
        )
        if table.raw_labels is None:
            raise DataError(f"{table.path}: no '{cfg.label}' column to evaluate against")
        targets = run.labels.encode(table.raw_labels, path=table.path, lines=table.lines)
        texts, source = table.texts, table.path
        own = cfg.test is not None and Path(data).resolve() == Path(cfg.test).resolve()
        default_dir = run.paths.eval_dir if own else run.paths.eval_dir / Path(data).stem
        split = "test" if own else "file"
    else:
        splits = load_splits(run.config)
        examples = splits.test if splits.test is not None else splits.validation
        texts, targets, source = examples.texts, examples.targets, examples.source
        default_dir = run.paths.eval_dir
        split = "test" if splits.test is not None else "validation"
    return evaluate_examples(
        run,
        texts,
        targets,
        source=str(source),
        out_dir=Path(out_dir) if out_dir is not None else default_dir,
        which=which,
        split=split,
    )


def evaluate_examples(
    run: Run,
    texts: list[str],
    targets: np.ndarray,
    *,
    source: str,
    out_dir: Path,
    which: str = "best",
    split: str = "test",
) -> EvalResult:
    """Score encoded-label examples with a run's model and write the evaluation files.

    Args:
        run: the run whose checkpoint is scored.
        texts: raw texts.
        targets: targets as :meth:`LabelSpace.encode` returns them.
        source: where the texts came from (for the report).
        out_dir: where metrics.json, report.txt and the PNGs go.
        which: ``best`` or ``last``.
        split: what the texts are: ``test`` (the run's test file: its metrics become the run's
            test metrics), ``validation`` (the run had no test file) or ``file`` (other data).

    Returns:
        An :class:`EvalResult`.
    """
    task = get_task(run.task)
    labels = list(run.labels.labels)
    scores = task.flat(predict_texts(run, texts, which=which))
    metrics = {k: float(v) for k, v in task.metrics(targets, scores, labels).items()}
    report = task.class_report(targets, scores, labels)
    confusion = task.confusion(targets, scores, labels)

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    payload: dict[str, Any] = {
        "run": run.config.name,
        "task": task.name,
        "data": source,
        "checkpoint": which,
        "split": split,
        "num_examples": len(texts),
        "metrics": {k: (v if np.isfinite(v) else None) for k, v in metrics.items()},
    }
    if "accuracy" in metrics and np.isfinite(metrics["accuracy"]):
        payload["intervals"] = {
            "accuracy": list(proportion_interval(metrics["accuracy"], len(texts)))
        }
    if confusion is not None:
        payload["labels"] = labels
        payload["confusion_matrix"] = confusion.tolist()
    files["metrics.json"] = out_dir / "metrics.json"
    atomic_write_text(files["metrics.json"], json.dumps(payload, indent=2) + "\n")
    files["report.txt"] = out_dir / "report.txt"
    atomic_write_text(files["report.txt"], format_report(payload, metrics, report))
    if confusion is not None:
        files["confusion_matrix.png"] = plot_confusion_matrix(
            confusion,
            labels,
            out_dir / "confusion_matrix.png",
            title=f"{run.config.name}: {source}",
        )
    if run.history:
        files["learning_curves.png"] = plot_learning_curves(
            run.history, out_dir / "learning_curves.png", title=run.config.name
        )
    return EvalResult(
        metrics=metrics,
        report=list(report),
        confusion=confusion,
        num_examples=len(texts),
        data=source,
        checkpoint=which,
        out_dir=out_dir,
        files=files,
    )


def format_report(
    payload: dict[str, Any], metrics: dict[str, float], report: list[ClassReport]
) -> str:
    """A plain-text report: what was scored, the metrics, and a per-class table."""
    lines = [
        f"run:        {payload['run']}",
        f"task:       {payload['task']}",
        f"data:       {payload['data']} ({payload['num_examples']} examples, {payload['split']})",
        f"checkpoint: {payload['checkpoint']}",
        "",
    ]
    width = max((len(k) for k in metrics), default=0)
    n = int(payload["num_examples"])
    lines += [format_with_interval(f"{k:<{width}} ", v, n) for k, v in metrics.items()]
    if report:
        lines += ["", format_class_table(report, digits=4)]
    return "\n".join(lines) + "\n"
