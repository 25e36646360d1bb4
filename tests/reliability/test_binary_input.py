"""Binary files where text is expected (a model, an archive, random bytes named .csv): each one
is refused in one short line naming the file, the line and the byte offset."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from modelyard.data import iter_records, read_table
from modelyard.errors import DataError

pytestmark = [pytest.mark.reliability, pytest.mark.unit]

SUFFIXES = (".csv", ".tsv", ".jsonl", ".txt")
ENCODINGS = {"utf-8": "UTF-8", "latin-1": "latin-1"}  # latin-1 decodes every byte


def test_random_binary_files_are_refused_in_one_short_line(tmp_path: Path, reliability) -> None:
    rng = random.Random(20)
    blobs = [rng.randbytes(size) for _ in range(8) for size in (256, 5000, 100_000)]
    longest = cases = 0
    for index, blob in enumerate(blobs):
        for suffix in SUFFIXES:
            path = tmp_path / f"blob{index}{suffix}"
            path.write_bytes(blob)
            for encoding, name in ENCODINGS.items():
                for read in (read_table, iter_records):
                    with pytest.raises(DataError) as err:
                        read(
                            path,
                            encoding=encoding,
                            **({"label": None} if read is read_table else {}),
                        )
                    message = str(err.value)
                    pattern = rf"{re.escape(str(path))}:\d+: not {name} text: .* at byte offset \d+"
                    assert re.match(pattern, message), message
                    assert message.isprintable(), message
                    longest = max(longest, len(message) - len(str(path)))
                    cases += 1
    assert longest <= 160
    reliability.record(
        "input",
        f"random binary files ({len(blobs)}: 256 B to 100 kB) read as CSV, TSV, JSONL and text, "
        "as UTF-8 and as Latin-1, for training and for prediction",
        cases,
        f"every one refused in one printable line of at most {longest} characters past the file "
        "name, naming the line, the byte offset and 'not UTF-8 text' (or 'not latin-1 text')",
    )
