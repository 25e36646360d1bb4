"""Read text (and label) columns from CSV, TSV, JSONL, Parquet and plain-text files.

Every reader yields rows with the source line they came from, so a bad row can be named as
``train.csv:17: empty text``. Problems that make the whole file unusable (missing file, missing
column, wrong encoding) always raise :class:`DataError`; a bad *row* either raises (the default)
or, with ``skip_bad_rows=True``, is returned in :attr:`TextTable.skipped` for the caller to report.

Blank lines are not records in any format and are passed over silently; a record whose text is
empty or only whitespace is a bad row. No cleaning happens here: that belongs to the tokenizer.

A record is at most :data:`MAX_RECORD_CHARS` characters (a longer line: a bad row, never held
whole). A CSV record a stray quote ran over lines is a bad row naming them; past
:data:`MAX_LOST_LINES_SHARE` of the file's lines so lost, the file is refused (skipping or not).
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.data.lines import TrackedLines, bounded_lines, count_lines
from modelyard.data.sniff import binary_error, decode_error, listing
from modelyard.errors import DataError

FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet", "txt")
MAX_RECORD_CHARS = 128 * 1024  # csv.field_size_limit()'s default: one bound for every format
MAX_LOST_LINES_SHARE = 0.01  # lines malformed quoting may swallow before a file is refused
EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".txt": "txt",
}


@dataclass
class BadRow:
    """A row that could not be used, and why."""

    path: str
    line: int
    reason: str
    lines: int = 1  # source lines the bad record took (a stray quote takes many)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Record:
    """One text to predict on, with the line it came from."""

    line: int
    text: str


@dataclass
class TextTable:
    """The usable rows of one file, in file order."""

    path: str
    texts: list[str]
    raw_labels: list[Any] | None  # None when no label column was asked for
    lines: list[int]  # 1-based source line of each row (CSV: the line where the record starts)
    skipped: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class _Row:
    line: int
    text: str
    label: Any


def detect_format(path: str | Path, format: str = "auto") -> str:
    """The file format: ``format`` itself, or (for ``"auto"``) the one its extension names.

    Args:
        path: the file.
        format: ``"auto"`` or one of ``csv, tsv, jsonl, parquet, txt``.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        DataError: the format is unknown, or ``"auto"`` meets an extension it does not know.
    """
    if format != "auto":
        if format not in FORMATS:
            raise DataError(
                f"{path}: unknown format '{format}'; valid formats: auto, {', '.join(FORMATS)}"
            )
        return format
    suffix = Path(path).suffix.lower()
    found = EXTENSIONS.get(suffix)
    if found is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension '{suffix}'; use one of "
            f"{', '.join(EXTENSIONS)} or set the format (csv, tsv, jsonl, parquet, txt)"
        )
    return found


def read_table(
    path: str | Path,
    *,
    text: str = "text",
    label: str | None = "label",
    format: str = "auto",
    encoding: str = "utf-8",
    skip_bad_rows: bool = False,
) -> TextTable:
    """Read the text column (and the raw label column) of one file.

    Args:
        path: a ``.csv``, ``.tsv``, ``.jsonl``/``.ndjson``, ``.parquet`` or ``.txt`` file.
            CSV and TSV need a header row; TSV uses the same quoting rules as CSV. A ``.txt``
            file holds one text per line and no labels.
        text: name of the text column (JSONL: key).
        label: name of the label column, or None to read texts only. Labels are returned as
            found (strings for CSV/TSV, JSON values for JSONL); :class:`LabelSpace` parses them.
        format: ``"auto"`` (from the extension) or ``csv, tsv, jsonl, parquet, txt``.
        encoding: text encoding of CSV/TSV/JSONL/txt files. ``utf-8`` also accepts a BOM.
        skip_bad_rows: return bad rows in ``skipped`` instead of raising at the first one.

    Returns:
        A :class:`TextTable` of the usable rows.

    Raises:
        DataError: the file is missing or unreadable, a column is missing, the encoding is
            wrong, every row is bad, or (without ``skip_bad_rows``) a row is bad; the message
            names the file and line.
    """
    fmt = detect_format(path, format)
    if fmt == "txt" and label is not None:
        raise DataError(
            f"{path}: a .txt file holds one text per line and no labels; "
            "use csv, tsv, jsonl or parquet for labelled data"
        )
    texts: list[str] = []
    labels: list[Any] = []
    lines: list[int] = []
    skipped: list[BadRow] = []
    for row in _rows(path, fmt, text=text, label=label, encoding=encoding):
        if isinstance(row, BadRow):
            if not skip_bad_rows:
                raise DataError(str(row))
            skipped.append(row)
            continue
        texts.append(row.text)
        labels.append(row.label)
        lines.append(row.line)
    if not texts and skipped:
        raise DataError(f"{path}: every row is bad ({len(skipped)}); the first: {skipped[0]}")
    return TextTable(
        path=str(path),
        texts=texts,
        raw_labels=labels if label is not None else None,
        lines=lines,
        skipped=skipped,
    )


def iter_records(
    path: str | Path,
    *,
    text: str = "text",
    format: str = "auto",
    encoding: str = "utf-8",
    chunk_size: int = 1024,
) -> Iterator[list[Record | BadRow]]:
    """Stream the texts of a file in chunks, for prediction on inputs that may not fit memory.

    The file, its format and its columns are checked when this is called; bad rows never raise
    but come back in the chunk as :class:`BadRow`, in file order with the good ones.

    Args:
        path: the input file (any format :func:`read_table` reads; no label is read).
        text: name of the text column.
        format: ``"auto"`` or a format name.
        encoding: the file's text encoding.
        chunk_size: how many rows (good or bad) each chunk holds, at most.

    Returns:
        An iterator of non-empty lists of :class:`Record` and :class:`BadRow`.

    Raises:
        DataError: the file is missing or unreadable, the column is missing, or the encoding
            is wrong (the last may surface while iterating).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    fmt = detect_format(path, format)
    _check_source(path, fmt, text=text, label=None, encoding=encoding)
    return _chunks(path, fmt, text, encoding, chunk_size)


def _chunks(
    path: str | Path, fmt: str, text: str, encoding: str, chunk_size: int
) -> Iterator[list[Record | BadRow]]:
    chunk: list[Record | BadRow] = []
    for row in _rows(path, fmt, text=text, label=None, encoding=encoding):
        chunk.append(row if isinstance(row, BadRow) else Record(line=row.line, text=row.text))
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ------------------------------------------------------------------------------ shared checks
def _check_source(
    path: str | Path, fmt: str, *, text: str, label: str | None, encoding: str
) -> None:
    """Fail early on what makes the whole file unusable: missing, unknown codec, bad header."""
    if fmt == "parquet":
        check_file(path)
        _parquet_columns(path, text, label)
        return
    check_text_file(path, encoding)
    if fmt in ("csv", "tsv"):
        with open_text(path, encoding) as f:
            reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
            try:
                header = next(reader, None)
            except UnicodeDecodeError as exc:
                raise decode_error(path, encoding, exc) from None
            except csv.Error as exc:
                raise DataError(f"{path}:1: cannot read the header row: {exc}") from None
        _check_header(path, header, text, label)


def check_file(path: str | Path) -> None:
    """Raise :class:`DataError` unless ``path`` is an existing file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    if not p.is_file():
        raise DataError(f"{path}: not a file")


def check_text_file(path: str | Path, encoding: str) -> None:
    """Raise :class:`DataError` unless ``path`` is a file of text in a known ``encoding``
    (missing, a directory, an unknown codec, binary content)."""
    check_file(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"{path}: unknown encoding '{encoding}'") from None
    try:
        not_text = binary_error(path, encoding)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    if not_text is not None:
        raise not_text


def _check_header(path: str | Path, header: list[str] | None, text: str, label: str | None) -> None:
    if not header:
        raise DataError(f"{path}: the file is empty; expected a header row naming the columns")
    for role, name in (("text", text), ("label", label)):
        if name is not None and name not in header:
            raise DataError(
                f"{path}:1: no {role} column '{name}'; columns found: {listing(header)}"
            )


def open_text(path: str | Path, encoding: str) -> Any:
    """``path`` opened for reading as text: a UTF-8 BOM dropped, line breaks left as written."""
    # utf-8-sig reads plain UTF-8 too and drops a BOM that would otherwise glue itself to the
    # first column name ("\ufefftext") or break the first JSON line
    enc = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    # newline="" so the csv module sees quoted line breaks as written
    return open(path, encoding=enc, newline="")


def _rows(
    path: str | Path, fmt: str, *, text: str, label: str | None, encoding: str
) -> Iterator[_Row | BadRow]:
    _check_source(path, fmt, text=text, label=label, encoding=encoding)
    if fmt == "parquet":
        yield from _parquet_rows(path, text, label)
        return
    try:
        if fmt in ("csv", "tsv"):
            yield from _csv_rows(path, "\t" if fmt == "tsv" else ",", text, label, encoding)
        elif fmt == "jsonl":
            yield from _jsonl_rows(path, text, label, encoding)
        else:
            yield from _txt_rows(path, encoding)
    except UnicodeDecodeError as exc:
        raise decode_error(path, encoding, exc) from None


def _text_problem(value: Any) -> str | None:
    if value is None:
        return "empty text"
    if not isinstance(value, str):
        return f"text is not a string (got {type(value).__name__} {value!r:.40})"
    if not value.strip():
        return "empty text"
    return None


# ------------------------------------------------------------------------------------ formats
def _csv_rows(
    path: str | Path, delimiter: str, text: str, label: str | None, encoding: str
) -> Iterator[_Row | BadRow]:
    name = str(path)
    total = count_lines(path)
    lost = 0  # lines taken by records a stray quote ran over several lines
    with open_text(path, encoding) as f:
        lines = TrackedLines(f)
        reader = csv.reader(lines, delimiter=delimiter)
        header = next(reader)
        ti = header.index(text)
        li = header.index(label) if label is not None else -1
        while True:
            # a quoted field may hold line breaks: the record starts on the line after the
            # last one the previous record consumed
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                reason = f"malformed row: {exc}"
            else:
                if not fields:
                    continue  # blank line
                reason = ""  # the shape first; the text once the shape is right
                if len(fields) != len(header):
                    reason = f"expected {len(header)} fields, found {len(fields)}"
                elif reader.line_num > start and lines.unclosed_at_end():
                    reason = "a quote opened in this record is never closed"
            end = reader.line_num
            if reason and end > start:  # a quote left open swallows the lines after it
                taken = end - start + 1
                reason += f" (lines {start}-{end} ({taken} lines) lost: an unclosed quote?)"
                lost += taken
                if lost > MAX_LOST_LINES_SHARE * total:
                    raise DataError(
                        f"{name}:{start}: {reason}; {lost} of the file's {total} lines lost to "
                        f"malformed quoting, over {MAX_LOST_LINES_SHARE:.0%}: refusing the file "
                        "(a field holding a quote must be quoted whole, its quotes doubled)"
                    )
            reason = reason or _text_problem(fields[ti]) or ""
            if reason:
                yield BadRow(name, start, reason, lines=end - start + 1)
            else:
                yield _Row(start, fields[ti], fields[li] if li >= 0 else None)


def _jsonl_rows(
    path: str | Path, text: str, label: str | None, encoding: str
) -> Iterator[_Row | BadRow]:
    name = str(path)
    with open_text(path, encoding) as f:
        # split on "\n" only (the file is opened with newline=""): JSON strings may not hold raw
        # line breaks, and a stray "\r" must not shift the line numbers a user sees in an editor
        for number, line in enumerate(bounded_lines(f, MAX_RECORD_CHARS), start=1):
            if isinstance(line, int):
                yield BadRow(name, number, _too_long(line))
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRow(name, number, f"not valid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield BadRow(name, number, f"expected a JSON object, got {type(obj).__name__}")
                continue
            missing = [k for k in (text, label) if k is not None and k not in obj]
            if missing:
                yield BadRow(
                    name,
                    number,
                    f"no key '{missing[0]}'; keys found: {listing(list(map(str, obj)), 'keys')}",
                )
                continue
            problem = _text_problem(obj[text])
            if problem:
                yield BadRow(name, number, problem)
                continue
            yield _Row(number, obj[text], obj[label] if label is not None else None)


def _txt_rows(path: str | Path, encoding: str) -> Iterator[_Row | BadRow]:
    with open_text(path, encoding) as f:
        for number, line in enumerate(bounded_lines(f, MAX_RECORD_CHARS), start=1):
            if isinstance(line, int):
                yield BadRow(str(path), number, _too_long(line))
                continue
            body = line.rstrip("\r\n")
            if body.strip():
                yield _Row(number, body, None)


def _too_long(length: int) -> str:
    return f"record too long: {length}+ characters (at most {MAX_RECORD_CHARS}); not read"


def _import_parquet(path: str | Path) -> Any:
    try:
        import pyarrow.parquet as pq  # lazy: only parquet input needs pyarrow
    except ImportError:
        raise DataError(
            f"{path}: reading parquet needs pyarrow: pip install 'modelyard[parquet]'"
        ) from None
    return pq


def _parquet_columns(path: str | Path, text: str, label: str | None) -> None:
    pq = _import_parquet(path)
    try:
        names = list(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file: {exc}") from None
    _check_header(path, names, text, label)


def _parquet_rows(path: str | Path, text: str, label: str | None) -> Iterator[_Row | BadRow]:
    """Rows of a parquet file; "line" is the 1-based row number, as parquet has no lines."""
    pq = _import_parquet(path)
    name = str(path)
    columns = list(dict.fromkeys([text] if label is None else [text, label]))
    number = 0
    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=4096, columns=columns):
            texts = batch.column(text).to_pylist()
            labels = batch.column(label).to_pylist() if label is not None else [None] * len(texts)
            for value, raw in zip(texts, labels, strict=True):
                number += 1
                problem = _text_problem(value)
                if problem:
                    yield BadRow(name, number, problem)
                    continue
                yield _Row(number, value, raw)
