"""What the readers say about a file that is not text, or whose content they quote.

A binary file read as CSV used to come back as one error line thousands of characters long (its
first "line", quoted in full as the columns found). Each message here is one short line: the
file, the line and the byte offset, ``not UTF-8 text`` (or the configured encoding), and at
most :data:`EXCERPT_CHARS` characters of quoted content, control characters escaped.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from modelyard.errors import DataError

EXCERPT_CHARS = 80
SNIFF_BYTES = 8192  # how much of a file is looked at for NUL bytes (git looks at as much)
# C0 control bytes no text line holds; tab, line breaks, form feed, DOS EOF and escape are text
CONTROL_BYTES = frozenset(range(32)) - {9, 10, 11, 12, 13, 26, 27}
_UNICODE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def excerpt(value: str, limit: int = EXCERPT_CHARS) -> str:
    """``value`` in double quotes, unprintable characters escaped, cut to ``limit`` characters
    (``...`` before the closing quote when cut)."""
    pieces: list[str] = []
    size = 2
    for ch in value:
        shown = "\\" + ch if ch in '"\\' else ch if ch.isprintable() else ascii(ch)[1:-1]
        if size + len(shown) > limit:
            while pieces and size + 3 > limit:
                size -= len(pieces.pop())
            return '"' + "".join(pieces) + '..."'
        pieces.append(shown)
        size += len(shown)
    return '"' + "".join(pieces) + '"'


def listing(names: list[str], what: str = "columns") -> str:
    """Column or key names, comma-separated, or when that is long or unprintable a quoted
    excerpt of them and how many there are."""
    joined = ", ".join(names)
    if len(joined) <= EXCERPT_CHARS and joined.isprintable():
        return joined or "(none)"
    noun = what if len(names) != 1 else what.rstrip("s")
    return f"{excerpt(joined)} ({len(names)} {noun})"


def text_name(encoding: str) -> str:
    """How a message names the encoding: ``UTF-8`` for utf-8 (with or without BOM)."""
    return "UTF-8" if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig") else encoding


def binary_error(path: str | Path, encoding: str) -> DataError | None:
    """An error when the start of ``path`` holds bytes no text file holds, else ``None``.

    Control bytes (:data:`CONTROL_BYTES`: not tab, line breaks, form feed, escape or DOS EOF)
    in the first :data:`SNIFF_BYTES` bytes mean the file is not text in any ASCII-compatible
    encoding when one of them is a NUL, when they are 1% of those bytes or more, or when one is
    on the first line (a CSV header); a stray one further down a text file is left to the rows.
    UTF-16/32 files (by encoding or byte order mark) are not looked at: their NUL bytes are
    text.

    Raises:
        OSError: the file cannot be read.
    """
    try:
        ascii_compatible = codecs.encode("\x00\n", text_codec(encoding)) == b"\x00\n"
    except (LookupError, UnicodeError):
        ascii_compatible = False
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not ascii_compatible or head.startswith(_UNICODE_BOMS):
        return None
    controls = [i for i, b in enumerate(head) if b in CONTROL_BYTES]
    first_line = len(head.split(b"\n", 1)[0])
    binary = head.find(b"\x00") >= 0 or 100 * len(controls) >= len(head)
    if not controls or not (binary or controls[0] < first_line):
        return None
    offset = controls[0]
    byte = head[offset]
    what = "a NUL byte" if byte == 0 else f"control byte 0x{byte:02x}"
    line = head.count(b"\n", 0, offset) + 1
    return DataError(
        f"{path}:{line}: not {text_name(encoding)} text: {what} at byte offset {offset} "
        "(a binary file?)"
    )


def text_codec(encoding: str) -> str:
    """The codec to encode probes with: ``utf-8-sig`` would prepend a BOM."""
    return "utf-8" if codecs.lookup(encoding).name == "utf-8-sig" else encoding


def decode_error(path: str | Path, encoding: str, exc: UnicodeDecodeError) -> DataError:
    """Name the line and byte offset of the first byte that does not decode."""
    where = f"{path}"
    detail = f"({exc.reason})"
    try:
        raw = Path(path).read_bytes()
        raw.decode(encoding)
    except UnicodeDecodeError as full:
        line = raw.count(b"\n", 0, full.start) + 1
        where = f"{path}:{line}"
        detail = f"byte 0x{raw[full.start]:02x} at byte offset {full.start} does not decode"
    except OSError:
        pass
    return DataError(
        f"{where}: not {text_name(encoding)} text: {detail}; if it is text in another encoding, "
        "set data.encoding (e.g. latin-1 or cp1252)"
    )
