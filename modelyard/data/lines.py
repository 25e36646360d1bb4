"""Reading a text file's lines: as written, bounded in length, or tracked for csv.reader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["TrackedLines", "bounded_lines", "count_lines", "physical_lines"]


def physical_lines(f: Any) -> Iterator[str]:
    """Lines ended by "\\n" only (a file opened with newline="" also splits on a lone "\\r")."""
    pending = ""
    for piece in f:
        pending += piece
        if pending.endswith("\n"):
            yield pending
            pending = ""
    if pending:
        yield pending


def bounded_lines(f: Any, limit: int) -> Iterator[str | int]:
    """Like :func:`physical_lines`, but a line over ``limit`` characters (its line break not
    counted) comes back as its length only: it is read in pieces and dropped, never held whole.
    """
    pending = ""
    over = 0  # characters of a line past the limit read so far (0: within it)
    while piece := f.readline(limit + 2):
        if over:
            over += len(piece)
        else:
            pending += piece
            if len(pending) > limit and len(pending.rstrip("\r\n")) > limit:
                over, pending = len(pending), ""
        if piece.endswith("\n"):
            if over:
                yield over - 1
                over = 0
            else:
                yield pending
                pending = ""
    if over:
        yield over
    elif pending:
        yield pending


class TrackedLines:
    """A text file's lines for csv.reader, noting whether the reader asked past the end."""

    def __init__(self, f: Any) -> None:
        self._lines = iter(f)
        self.at_end = False
        self.last = ""

    def __iter__(self) -> TrackedLines:
        return self

    def __next__(self) -> str:
        try:
            self.last = next(self._lines)
        except StopIteration:
            self.at_end = True
            raise
        return self.last

    def unclosed_at_end(self) -> bool:
        """Whether the record just read ended only because the file did, inside a quote.

        The csv module (not strict) hands back what it has at the end of the file, an open
        quote included. A record ends at its own line break, so a reader that asked past a last
        line that has one was inside a quote; without a final line break, it was unless the
        last line closes a quote.
        """
        if not self.at_end:
            return False
        return self.last.endswith(("\n", "\r")) or not self.last.endswith('"')


def count_lines(path: str | Path) -> int:
    """Lines in a file (a last line without a line break counts), read in bounded blocks."""
    count = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")
