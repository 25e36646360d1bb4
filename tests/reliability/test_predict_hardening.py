"""``modelyard predict`` against hostile input files: a record's size is bounded in every format,
and a stray quote in a CSV reports the lines it swallowed and, past a stated share, refuses the
file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.serving import build_real_bundle

from modelyard.batch_predict import predict_file
from modelyard.data import read_table
from modelyard.data.readers import MAX_LOST_LINES_SHARE, MAX_RECORD_CHARS
from modelyard.errors import DataError

pytestmark = [pytest.mark.reliability]

LONG_MB = 8

# VmHWM: this process's peak RSS since its exec (getrusage's ru_maxrss would carry the forking
# pytest's own size across the exec)
PEAK = """
import re, sys
from modelyard.batch_predict import predict_file
predict_file(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_real_bundle(root, "tiny")
    return root / "tiny"


def _peak_mb(bundle: Path, source: Path, out: Path) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, str(bundle), str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_a_huge_record_is_a_bad_row_read_in_bounded_memory(
    bundle: Path, tmp_path: Path, fmt: str, reliability
) -> None:
    def line(text: str) -> str:
        return json.dumps({"text": text}) if fmt == "jsonl" else text

    small = tmp_path / f"small.{fmt}"
    small.write_text(line("a fine film") + "\n" + line("dull") + "\n")
    huge = tmp_path / f"huge.{fmt}"
    word = "word " * (LONG_MB * 1024 * 1024 // 5)
    huge.write_text(line("a fine film") + "\n" + line(word) + "\n" + line("dull") + "\n")
    base = _peak_mb(bundle, small, tmp_path / "small.out")
    peak = _peak_mb(bundle, huge, tmp_path / "huge.out")
    rows = [json.loads(x) for x in (tmp_path / "huge.out").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert "label" in rows[0] and "label" in rows[2]
    assert "error" in rows[1] and f"at most {MAX_RECORD_CHARS}" in rows[1]["error"], rows[1]
    # the line is streamed past, never held whole (~8 MB of text would cost 75x in the tokenizer)
    assert peak - base < 3 * LONG_MB, (base, peak)
    reliability.record(
        "input",
        f"`modelyard predict` on a {fmt} file with one {LONG_MB} MB line between two short ones",
        1,
        f"that line a bad row ({rows[1]['error'][:60]}...), the others predicted; peak RSS "
        f"{peak} MB against {base} MB for the short lines alone",
    )


def _stray(path: Path, lines: int, closed_after: int | None) -> None:
    """A CSV whose line 3 opens a stray quote, which a second stray quote ``closed_after`` lines
    on closes (leaving that record with a field too many), or nothing ever closes."""
    rows = ["text,label", "fine,pos", 'oops,"neg']
    for i in range(lines - 3):
        stray = '"' if closed_after is not None and i == closed_after - 1 else ""
        rows.append(f"row number {i} is {stray}fine,pos")
    path.write_text("\n".join(rows) + "\n")


def test_a_stray_quote_reports_the_lines_it_swallowed(
    bundle: Path, tmp_path: Path, reliability
) -> None:
    source = tmp_path / "few.csv"
    _stray(source, 2000, closed_after=3)  # lines 3-6 are one record: 3 lines swallowed
    out = tmp_path / "few.jsonl"
    summary = predict_file(bundle, source, out, progress=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    bad = [r for r in rows if "error" in r]
    assert len(bad) == 1 and bad[0]["line"] == 3, bad
    assert "lines 3-6" in bad[0]["error"] and "4 lines" in bad[0]["error"], bad
    assert summary.failed == 1 and summary.lines_lost == 4
    assert summary.rows == 1999 - 4 + 1
    reliability.record(
        "input",
        "a CSV of 2,000 lines whose line 3 opens a quote that line 6 closes",
        1,
        f"one bad row that names the lines it took: {bad[0]['error']}",
    )


@pytest.mark.parametrize("closed_after", [None, 400], ids=["never closed", "closed far on"])
def test_a_stray_quote_past_the_stated_share_refuses_the_file(
    bundle: Path, tmp_path: Path, closed_after: int | None, reliability
) -> None:
    source = tmp_path / "stray.csv"
    _stray(source, 14_218, closed_after)
    with pytest.raises(DataError) as err:
        predict_file(bundle, source, tmp_path / "out.jsonl", progress=False)
    message = str(err.value)
    assert message.startswith(f"{source}:3:") and "lines 3-" in message, message
    assert f"{MAX_LOST_LINES_SHARE:.0%}" in message, message
    with pytest.raises(DataError):  # training reads the same way, bad rows skipped or not
        read_table(source, skip_bad_rows=True)
    reliability.record(
        "input",
        f"a CSV of 14,218 lines whose line 3 opens a quote "
        f"{'never closed' if closed_after is None else f'closed {closed_after} lines on'}",
        1,
        f"refused, for predict and training: {message.split(': ', 1)[1][:110]}...",
    )


def test_a_quote_left_open_to_the_end_of_a_small_file_is_not_a_row(tmp_path: Path) -> None:
    """The csv module hands back an open quote at the end of the file as a row; it is not one."""
    source = tmp_path / "small.csv"
    _stray(source, 200, closed_after=None)  # 198 lines swallowed into one "valid" row
    with pytest.raises(DataError, match="never closed"):
        read_table(source, skip_bad_rows=True)
    for ending in ("\n", ""):  # a quoted field with line breaks, last in the file, is fine
        legit = tmp_path / "legit.csv"
        legit.write_text('text,label\nfine,pos\n"two\nlines",neg\nlast,"a\nb"' + ending)
        table = read_table(legit)
        assert table.texts == ["fine", "two\nlines", "last"] and table.lines == [2, 3, 5]
        assert table.raw_labels == ["pos", "neg", "a\nb"]
