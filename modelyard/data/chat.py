"""Read generative records: chat, prompt/completion and plain text, JSONL or CSV/TSV.

Three formats, told apart per record by their keys (JSONL) or the header (CSV, TSV); every
record of a file must be in the format of its first record:

- ``chat``: ``{"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}``, the
  format of OpenAI fine-tuning and TRL's conversational datasets;
- ``prompt_completion``: ``prompt`` and ``completion`` strings, read as the messages
  ``[user: prompt, assistant: completion]``;
- ``text``: a ``text`` string, for continued pretraining (no roles, every token is learnt).

Other top-level keys (an ``id``, metadata) are passed over; a message holds ``role`` and
``content`` only, so an OpenAI ``weight`` or a tool call is refused rather than silently
ignored. Any problem raises :class:`DataError` naming ``file:line``. Torch-free.

Training records (:func:`read_conversations`) end with an assistant turn, the answer to learn.
Generation inputs (:func:`read_generation_inputs`) end with a user turn (or a prompt) to
answer; a trailing assistant turn or completion there is the reference answer, kept apart.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modelyard.data.lines import physical_lines
from modelyard.data.readers import check_text_file, detect_format, open_text
from modelyard.data.sniff import decode_error, excerpt, listing
from modelyard.errors import DataError

RecordFormat = Literal["chat", "prompt_completion", "text"]
RECORD_FORMATS: tuple[str, ...] = ("chat", "prompt_completion", "text")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
FILE_FORMATS: tuple[str, ...] = ("jsonl", "csv", "tsv")
# the keys (JSONL) or columns (CSV) that say a record's format
_FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
_FORMAT_NAMES = {"chat": "chat", "prompt_completion": "prompt/completion", "text": "plain text"}


@dataclass(frozen=True)
class Conversation:
    """One training record.

    Attributes:
        messages: ``{"role", "content"}`` dicts, ending with an assistant turn; empty for text.
        text: the text of a plain-text record (continued pretraining), else None.
        format: the record's format (``chat``, ``prompt_completion``, ``text``).
        source: the file it came from.
        line: its 1-based line (CSV: the line where the record starts).
    """

    messages: list[dict[str, str]]
    text: str | None
    format: RecordFormat
    source: str
    line: int

    @property
    def where(self) -> str:
        """``file:line``, for messages about this record."""
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class GenerationInput:
    """One record to generate an answer for.

    Attributes:
        messages: the turns up to and including the last user turn; empty for text.
        text: a plain-text record's text, to be continued; else None.
        reference: the expected answer (a trailing assistant turn or the completion), or None.
        format: the record's format.
        source: the file it came from.
        line: its 1-based line.
    """

    messages: list[dict[str, str]]
    text: str | None
    reference: str | None
    format: RecordFormat
    source: str
    line: int


def read_conversations(
    path: str | Path, *, format: str = "auto", encoding: str = "utf-8"
) -> list[Conversation]:
    """Read the training records of one file, in file order.

    Args:
        path: a ``.jsonl``/``.ndjson``, ``.csv`` or ``.tsv`` file.
        format: ``"auto"`` (from the extension) or ``jsonl``, ``csv``, ``tsv``.
        encoding: the file's text encoding.

    Returns:
        One :class:`Conversation` per record; a chat's last turn is the assistant's.

    Raises:
        DataError: the file is missing, unreadable or holds no records; a record is malformed,
            mixes formats with the file's first record, has an unknown role, empty or non-string
            content, or (chat) does not end with an assistant turn. The message names file:line.
    """
    found: list[Conversation] = []
    for rec in _parsed(path, format, encoding, need_completion=True):
        if rec.format == "chat" and rec.messages[-1]["role"] != "assistant":
            raise DataError(
                f"{rec.where}: the last turn is {rec.messages[-1]['role']!r}; a training "
                "conversation ends with the assistant's answer"
            )
        found.append(Conversation(rec.messages, rec.text, rec.format, rec.source, rec.line))
    return found


def read_generation_inputs(
    path: str | Path, *, format: str = "auto", encoding: str = "utf-8"
) -> list[GenerationInput]:
    """Read the records to generate answers for (``generate --input FILE``), in file order.

    The answer to produce is for the record's last user turn (chat) or its prompt; a trailing
    assistant turn or a completion is the reference answer. A ``completion`` column may be
    absent or empty here.

    Args:
        path: a ``.jsonl``/``.ndjson``, ``.csv`` or ``.tsv`` file.
        format: ``"auto"`` (from the extension) or ``jsonl``, ``csv``, ``tsv``.
        encoding: the file's text encoding.

    Returns:
        One :class:`GenerationInput` per record.

    Raises:
        DataError: as :func:`read_conversations`, and for a chat whose turns end with anything
            but a user turn (optionally followed by one assistant turn).
    """
    found: list[GenerationInput] = []
    for rec in _parsed(path, format, encoding, need_completion=False):
        messages, reference = rec.messages, None
        if rec.format == "prompt_completion":
            reference = rec.completion
            messages = messages[:1]
        elif rec.format == "chat" and messages[-1]["role"] == "assistant":
            reference, messages = messages[-1]["content"], messages[:-1]
        if rec.format != "text" and (not messages or messages[-1]["role"] != "user"):
            last = repr(messages[-1]["role"]) if messages else "nothing"
            raise DataError(
                f"{rec.where}: no user turn to answer: the turns end with {last} (a "
                "generation input ends with a user turn, optionally followed by the reference "
                "assistant turn)"
            )
        found.append(
            GenerationInput(messages, rec.text, reference, rec.format, rec.source, rec.line)
        )
    return found


# ------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class _Parsed:
    messages: list[dict[str, str]]
    text: str | None
    completion: str | None
    format: RecordFormat
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _parsed(
    path: str | Path, format: str, encoding: str, *, need_completion: bool
) -> list[_Parsed]:
    fmt = detect_format(path, format)
    if fmt not in FILE_FORMATS:
        raise DataError(
            f"{path}: generative records are read from {', '.join(FILE_FORMATS)} files, not {fmt}"
        )
    check_text_file(path, encoding)
    name = str(path)
    first: tuple[str, int] | None = None  # the file's format and the line that set it
    found: list[_Parsed] = []
    try:
        for line, obj in _objects(path, fmt, encoding):
            where = f"{name}:{line}"
            kind = _record_format(obj, where)
            if first is None:
                first = (kind, line)
            elif kind != first[0]:
                raise DataError(
                    f"{where}: a {_FORMAT_NAMES[kind]} record in a file whose first record "
                    f"(line {first[1]}) is {_FORMAT_NAMES[first[0]]}; keep one format per file"
                )
            found.append(_record(obj, kind, name, line, need_completion=need_completion))
    except UnicodeDecodeError as exc:
        raise decode_error(path, encoding, exc) from None
    if not found:
        raise DataError(f"{path}: no records")
    return found


def _objects(path: str | Path, fmt: str, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) pairs; a CSV row is a dict of its columns. Blank lines are skipped."""
    name = str(path)
    with open_text(path, encoding) as f:
        if fmt == "jsonl":
            for number, text in enumerate(physical_lines(f), start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{name}:{number}: not valid JSON: {exc.msg} (column {exc.colno})"
                    ) from None
                if not isinstance(obj, dict):
                    raise DataError(
                        f"{name}:{number}: expected a JSON object, got {type(obj).__name__}"
                    )
                yield number, obj
            return
        yield from _csv_objects(f, name, "\t" if fmt == "tsv" else ",")


def _csv_objects(f: Any, name: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{name}:1: cannot read the header row: {exc}") from None
    if not header:
        raise DataError(f"{name}: the file is empty; expected a header row naming the columns")
    kinds = [k for k, keys in _FORMAT_KEYS.items() if keys[0] in header]
    if len(kinds) != 1:
        wanted = "; ".join(" and ".join(keys) for keys in _FORMAT_KEYS.values())
        raise DataError(
            f"{name}:1: expected the columns of one format ({wanted}); "
            f"columns found: {listing(header)}"
        )
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: the record starts here
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{name}:{start}: malformed row: {exc}") from None
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{name}:{start}: expected {len(header)} fields, found {len(fields)}")
        yield start, dict(zip(header, fields, strict=True))


def _record_format(obj: dict[str, Any], where: str) -> RecordFormat:
    kinds = [k for k, keys in _FORMAT_KEYS.items() if keys[0] in obj]
    if len(kinds) == 1:
        return kinds[0]  # type: ignore[return-value]
    if not kinds:
        problem = "no key 'messages', 'prompt' or 'text'"
    else:
        problem = f"keys of more than one format ({', '.join(_FORMAT_KEYS[k][0] for k in kinds)})"
    raise DataError(f"{where}: {problem}; keys found: {listing(list(map(str, obj)), 'keys')}")


def _record(
    obj: dict[str, Any], kind: RecordFormat, source: str, line: int, *, need_completion: bool
) -> _Parsed:
    where = f"{source}:{line}"
    if kind == "text":
        return _Parsed([], _string(obj["text"], "text", where), None, kind, source, line)
    if kind == "prompt_completion":
        prompt = _string(obj["prompt"], "prompt", where)
        completion: str | None = None
        if need_completion or obj.get("completion") not in (None, ""):
            if "completion" not in obj:
                raise DataError(f"{where}: a prompt without a 'completion'")
            completion = _string(obj["completion"], "completion", where)
        messages = [{"role": "user", "content": prompt}]
        if completion is not None:
            messages.append({"role": "assistant", "content": completion})
        return _Parsed(messages, None, completion, kind, source, line)
    return _Parsed(_messages(obj["messages"], where), None, None, kind, source, line)


def _messages(raw: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        got = "an empty list" if raw == [] else type(raw).__name__
        raise DataError(f"{where}: 'messages' must be a non-empty list of turns, got {got}")
    messages: list[dict[str, str]] = []
    for number, turn in enumerate(raw, start=1):
        at = f"{where}: message {number}"
        if not isinstance(turn, dict):
            raise DataError(f"{at}: expected an object, got {type(turn).__name__}")
        extra = sorted(set(map(str, turn)) - {"role", "content"})
        if extra:
            raise DataError(
                f"{at}: unknown key {extra[0]!r}; a message holds 'role' and 'content' only"
            )
        role = turn.get("role")
        if role not in ROLES:
            shown = excerpt(role) if isinstance(role, str) else repr(role)
            raise DataError(f"{at}: unknown role {shown}; valid roles: {', '.join(ROLES)}")
        messages.append({"role": role, "content": _string(turn.get("content"), "content", at)})
    return messages


def _string(value: Any, key: str, where: str) -> str:
    if value is None:
        raise DataError(f"{where}: no {key}")
    if not isinstance(value, str):
        raise DataError(
            f"{where}: {key} is not a string (got {type(value).__name__} {value!r:.40})"
        )
    if not value.strip():
        raise DataError(f"{where}: empty {key}")
    return value
