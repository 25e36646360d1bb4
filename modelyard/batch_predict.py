"""Predict a whole file, streamed: rows in (CSV, JSONL, plain text or stdin), JSONL out.

Rows are read and predicted a chunk at a time, so a file larger than memory works. Each output
line names its source line: ``{"line": 12, "label": ..., "score": ..., "scores": {...}}``. A bad
row becomes ``{"line": 17, "error": "..."}``, is counted, and never stops or loses the others.
"""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from tqdm import tqdm

from modelyard.data import BadRow, Record, iter_records
from modelyard.errors import ModelyardError, RunError
from modelyard.runs import is_run_dir
from modelyard.runtime.predictor import Prediction, to_predictions

Scorer = Callable[[Sequence[str]], list[Prediction]]


@dataclass
class PredictSummary:
    """What :func:`predict_file` did.

    Attributes:
        rows: rows read (predicted plus failed).
        predicted: rows written with a prediction.
        failed: rows written as an error (a bad row or a failed prediction).
        output: where the JSONL went (``-`` for stdout).
        lines_lost: source lines of the bad rows (a stray quote's row takes many).
        seconds: wall time.
    """

    rows: int
    predicted: int
    failed: int
    output: str
    seconds: float
    lines_lost: int = 0


def predict_file(
    source: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    text_column: str = "text",
    chunk_size: int = 1024,
    progress: bool = True,
    version: int | None = None,
    format: str = "auto",
) -> PredictSummary:
    """Predict every row of ``input`` with a bundle (or a run) and write JSONL to ``output``.

    Args:
        source: a bundle (``models/NAME``, ``models/NAME/VERSION``) or a training run directory
            (``runs/NAME``; needs the training extras).
        input: a CSV/TSV/JSONL/Parquet/text file, or ``-`` for stdin.
        output: the JSONL file to write, or ``-`` for stdout.
        text_column: the column holding the text (CSV/JSONL).
        chunk_size: rows read and predicted at a time.
        progress: show a progress bar on stderr.
        version: which bundle version (default: the latest).
        format: the input format (``auto``: from the extension; for stdin, sniffed from the
            first line: JSON object -> jsonl, a header naming ``text_column`` -> csv, else txt).

    Returns:
        A :class:`PredictSummary` with row and failure counts.

    Raises:
        BundleError: the bundle is missing or corrupted.
        RunError: the run directory is incomplete.
        DataError: the input file is missing or unreadable as a whole.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    scorer = _scorer(source, version)
    started = time.perf_counter()
    rows = failed = lost = 0
    with (
        _open_input(input, format, text_column) as (path, fmt),
        _open_output(output) as out,
        tqdm(unit=" rows", disable=not progress, file=sys.stderr, desc="predict") as bar,
    ):
        for chunk in iter_records(path, text=text_column, format=fmt, chunk_size=chunk_size):
            results = _predict_chunk(scorer, chunk)
            out.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in results))
            rows += len(results)
            failed += sum(1 for r in results if "error" in r)
            lost += sum(item.lines for item in chunk if isinstance(item, BadRow))
            bar.update(len(results))
    return PredictSummary(
        rows=rows,
        predicted=rows - failed,
        failed=failed,
        output=str(output),
        seconds=time.perf_counter() - started,
        lines_lost=lost,
    )


def _predict_chunk(scorer: Scorer, chunk: Sequence[Record | BadRow]) -> list[dict[str, Any]]:
    """One output dict per row, in order; a failure is confined to the rows it concerns."""
    good = [item for item in chunk if isinstance(item, Record)]
    predicted: dict[int, dict[str, Any]] = {}
    try:
        preds = scorer([r.text for r in good])
        predicted = {id(r): p.to_dict() for r, p in zip(good, preds, strict=True)}
    except (ModelyardError, ValueError, TypeError, RuntimeError):
        # one row broke the chunk: redo it row by row so only that row is reported
        for record in good:
            try:
                predicted[id(record)] = scorer([record.text])[0].to_dict()
            except (ModelyardError, ValueError, TypeError, RuntimeError) as exc:
                predicted[id(record)] = {"error": f"prediction failed: {exc}"}
    results: list[dict[str, Any]] = []
    for item in chunk:
        if isinstance(item, BadRow):
            results.append({"line": item.line, "error": item.reason})
        else:
            results.append({"line": item.line, **predicted[id(item)]})
    return results


def _scorer(source: str | Path, version: int | None) -> Scorer:
    """A bundle's predictor, or, for a training run directory, the run's torch model."""
    path = Path(source)
    if is_run_dir(path):
        return _run_scorer(path)
    from modelyard.runtime import load_predictor

    return load_predictor(path, version).predict


def _run_scorer(path: Path) -> Scorer:
    # imported here: a run needs torch, a bundle must not
    from modelyard.training import Run, load_model, predict_texts

    run = Run.load(path)
    if run.labels.kind.generative:
        raise RunError(f"{path} is a {run.task} run: it writes text; use `modelyard generate`")
    model = load_model(run)

    def score(texts: Sequence[str]) -> list[Prediction]:
        scores = predict_texts(run, texts, model=model)
        return to_predictions(run.task, run.labels.labels, scores)

    return score


@contextmanager
def _open_input(source: str | Path, format: str, text_column: str) -> Iterator[tuple[str, str]]:
    """The input as a (path, format) pair; stdin is spooled to a temporary file first.

    The data readers check a file's header before streaming it, which a pipe cannot replay;
    spooling goes to disk in blocks, so stdin larger than memory still works.
    """
    if str(source) != "-":
        yield str(source), format
        return
    with tempfile.TemporaryDirectory(prefix="modelyard-stdin-") as tmp:
        spool = Path(tmp) / "stdin"
        with spool.open("wb") as fh:
            shutil.copyfileobj(sys.stdin.buffer, fh, 1 << 20)
        yield str(spool), format if format != "auto" else _sniff_format(spool, text_column)


def _sniff_format(path: Path, text_column: str) -> str:
    with path.open("rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    if first.startswith("{"):
        return "jsonl"
    if text_column in next(csv.reader([first]), []):
        return "csv"
    return "txt"


@contextmanager
def _open_output(output: str | Path) -> Iterator[IO[bytes]]:
    if str(output) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        yield fh
