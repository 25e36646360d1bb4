"""Readers: every format, line numbers, and a clear error for every kind of bad input."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.data import BadRow, Record, detect_format, iter_records, read_table
from modelyard.errors import DataError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ------------------------------------------------------------------------------------ formats
def test_csv_multiline_quoted_field_keeps_line_numbers(tmp_path: Path) -> None:
    f = write(
        tmp_path / "train.csv",
        'text,label\nfirst,a\n"spans\ntwo, lines",b\n"and ""three""\n\nlines",a\nlast,b\n',
    )
    table = read_table(f)
    assert table.texts == ["first", "spans\ntwo, lines", 'and "three"\n\nlines', "last"]
    assert table.raw_labels == ["a", "b", "a", "b"]
    assert table.lines == [2, 3, 5, 8]
    assert table.skipped == []


def test_csv_error_after_multiline_field_names_the_right_line(tmp_path: Path) -> None:
    f = write(tmp_path / "reviews.csv", 'text,label\n"one\ntwo\nthree",a\n   ,b\n')
    with pytest.raises(DataError, match=r"reviews\.csv:5: empty text"):
        read_table(f)


def test_csv_blank_lines_bom_and_other_columns(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "\ufeffid,body,score\n1,hello,0.5\n\n2,world,-1\n")
    table = read_table(f, text="body", label="score")
    assert table.texts == ["hello", "world"]
    assert table.raw_labels == ["0.5", "-1"]
    assert table.lines == [2, 4]


def test_tsv(tmp_path: Path) -> None:
    f = write(tmp_path / "d.tsv", "text\tlabel\na, comma here\tx\nsecond\ty\n")
    table = read_table(f)
    assert table.texts == ["a, comma here", "second"]
    assert table.raw_labels == ["x", "y"]
    assert table.lines == [2, 3]


def test_jsonl_keeps_json_label_types(tmp_path: Path) -> None:
    rows = [
        {"text": "a", "label": ["x", "y"]},
        {"text": "b", "label": True},
        {"text": "c", "label": 3},
    ]
    f = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n")
    with f.open("a") as fh:
        fh.write(json.dumps(rows[2]) + "\n")
    table = read_table(f)
    assert table.texts == ["a", "b", "c"]
    assert table.raw_labels == [["x", "y"], True, 3]
    assert table.lines == [1, 2, 4]


def test_ndjson_extension_and_explicit_format(tmp_path: Path) -> None:
    f = write(tmp_path / "d.ndjson", '{"text": "a", "label": "x"}\n')
    assert read_table(f).texts == ["a"]
    g = write(tmp_path / "d.data", "text,label\na,x\n")
    assert read_table(g, format="csv").texts == ["a"]


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "", "c"], "y": [1.5, 2.0, None]}), f)
    with pytest.raises(DataError, match=r"d\.parquet:2: empty text"):
        read_table(f, label="y")
    table = read_table(f, label="y", skip_bad_rows=True)
    assert table.texts == ["a", "c"]
    assert table.raw_labels == [1.5, None]
    assert table.lines == [1, 3]
    assert [str(b) for b in table.skipped] == [f"{f}:2: empty text"]
    with pytest.raises(DataError, match=r"no label column 'label'; columns found: text, y"):
        read_table(f)


def test_txt_one_text_per_line(tmp_path: Path) -> None:
    f = write(tmp_path / "in.txt", "first text\r\n\nsecond, text\n")
    table = read_table(f, label=None)
    assert table.texts == ["first text", "second, text"]
    assert table.lines == [1, 3]
    assert table.raw_labels is None
    with pytest.raises(DataError, match=r"in\.txt: a \.txt file holds one text per line"):
        read_table(f)


def test_detect_format() -> None:
    assert detect_format("a/B.CSV") == "csv"
    assert detect_format("x.jsonl") == "jsonl"
    assert detect_format("x.bin", "tsv") == "tsv"
    with pytest.raises(DataError, match=r"x\.xlsx: cannot tell the format"):
        detect_format("x.xlsx")
    with pytest.raises(DataError, match="unknown format 'xml'"):
        detect_format("x.csv", "xml")


def test_real_food_reviews_train() -> None:
    table = read_table(REPO / "data" / "food_reviews" / "train.csv")
    assert len(table.texts) == 4000
    assert set(table.raw_labels or []) == {"great", "other"}
    assert table.skipped == []
    assert table.lines[0] == 2


# ------------------------------------------------------------------------------------- errors
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv")


def test_missing_column_names_the_columns_found(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "review,score\nx,1\n")
    with pytest.raises(DataError, match=r"d\.csv:1: no text column 'text'; columns found: review"):
        read_table(f)
    with pytest.raises(DataError, match=r"no label column 'label'; columns found: review, score"):
        read_table(f, text="review")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"e\.csv: the file is empty"):
        read_table(write(tmp_path / "e.csv", ""))


def test_wrong_field_count(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\nok,a\ntoo,many,fields\nfine,b\n")
    with pytest.raises(DataError, match=r"d\.csv:3: expected 2 fields, found 3"):
        read_table(f)


def test_wrong_encoding_names_file_line_and_byte(tmp_path: Path) -> None:
    f = write(tmp_path / "latin.csv", "text,label\nfine,a\ncaf\u00e9 au lait,b\n", "latin-1")
    with pytest.raises(
        DataError, match=r"latin\.csv:3: not UTF-8 text: byte 0xe9 at byte offset 21 "
    ) as err:
        read_table(f)
    assert "data.encoding" in str(err.value)
    assert read_table(f, encoding="latin-1").texts[1] == "caf\u00e9 au lait"


def test_unknown_encoding(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\na,b\n")
    with pytest.raises(DataError, match=r"d\.csv: unknown encoding 'utf-9'"):
        read_table(f, encoding="utf-9")


def test_bad_json_lines(tmp_path: Path) -> None:
    f = write(
        tmp_path / "d.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", \n[1, 2]\n'
        '{"label": 1}\n{"text": 7, "label": 1}\n',
    )
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        read_table(f)
    table = read_table(f, skip_bad_rows=True)
    assert table.texts == ["a"]
    reasons = [str(b) for b in table.skipped]
    assert reasons[0].startswith(f"{f}:2: not valid JSON")
    assert reasons[1] == f"{f}:3: expected a JSON object, got list"
    assert reasons[2] == f"{f}:4: no key 'text'; keys found: label"
    assert reasons[3].startswith(f"{f}:5: text is not a string")


def test_skip_bad_rows_counts_and_order(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", 'text,label\na,x\n,x\nb,y\nc\n"",y\nd,x\n')
    table = read_table(f, skip_bad_rows=True)
    assert table.texts == ["a", "b", "d"]
    assert table.lines == [2, 4, 7]
    assert [(b.line, b.reason) for b in table.skipped] == [
        (3, "empty text"),
        (5, "expected 2 fields, found 1"),
        (6, "empty text"),
    ]


def test_every_row_bad_raises_even_when_skipping(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\n,x\n  ,y\n")
    with pytest.raises(DataError, match=r"d\.csv: every row is bad \(2\); the first: .*d\.csv:2"):
        read_table(f, skip_bad_rows=True)


# ----------------------------------------------------------------------------------- not text
def _one_short_line(message: str, path: Path) -> bool:
    # the file named once, then at most a short sentence: no line break, nothing unprintable
    return message.isprintable() and len(message) - len(str(path)) <= 160


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt"])
def test_a_random_binary_file_is_one_short_line(tmp_path: Path, suffix: str) -> None:
    rng = random.Random(7)
    for size in (64, 5000, 100_000):
        f = tmp_path / f"blob{size}{suffix}"
        f.write_bytes(rng.randbytes(size))
        with pytest.raises(DataError) as err:
            read_table(f, label=None)
        message = str(err.value)
        where = re.escape(str(f))
        assert re.match(rf"{where}:\d+: not UTF-8 text: .* at byte offset \d+", message), message
        assert _one_short_line(message, f), message


def test_binary_without_nul_bytes_read_as_csv_is_not_text(tmp_path: Path) -> None:
    # 7-bit junk decodes as UTF-8 and as Latin-1; its control bytes give it away
    rng = random.Random(3)
    f = tmp_path / "junk.csv"
    f.write_bytes(bytes(rng.randrange(1, 128) for _ in range(20_000)))
    for encoding, name in (("utf-8", "UTF-8"), ("latin-1", "latin-1")):
        with pytest.raises(DataError, match=rf"junk\.csv:1: not {name} text: control byte 0x") as e:
            read_table(f, encoding=encoding)
        assert _one_short_line(str(e.value), f), str(e.value)


def test_a_nul_byte_later_in_the_file_names_its_line(tmp_path: Path) -> None:
    f = tmp_path / "nul.csv"
    f.write_bytes(b"text,label\nfine,a\nbro\x00ken,b\n")
    with pytest.raises(
        DataError, match=r"nul\.csv:3: not UTF-8 text: a NUL byte at byte offset 21"
    ):
        read_table(f)


def test_a_long_header_or_key_list_is_a_short_quoted_excerpt(tmp_path: Path) -> None:
    header = ",".join(f"column_{i}" for i in range(500))
    f = write(tmp_path / "wide.csv", header + "\n" + ",".join(["x"] * 500) + "\n")
    with pytest.raises(DataError) as err:
        read_table(f)
    assert re.fullmatch(
        rf"{re.escape(str(f))}:1: no text column 'text'; columns found: "
        r'"column_0, column_1, [^"]*\.\.\." \(500 columns\)',
        str(err.value),
    ), str(err.value)
    assert _one_short_line(str(err.value), f)
    keys = {f"key_{i}": i for i in range(300)}
    g = write(tmp_path / "wide.jsonl", json.dumps(keys) + "\n")
    with pytest.raises(DataError, match=r'keys found: "key_0, key_1, .*\.\.\." \(300 keys\)') as e:
        read_table(g, label=None)
    assert _one_short_line(str(e.value), g)


def test_a_header_of_quoted_line_breaks_is_not_a_long_line(tmp_path: Path) -> None:
    # an opening quote swallows the lines after it into one column name
    f = write(tmp_path / "q.csv", '"' + "word " * 2000 + "\nmore\n")
    with pytest.raises(DataError, match=r"q\.csv:1: no text column 'text'") as err:
        read_table(f)
    assert _one_short_line(str(err.value), f), str(err.value)


# ------------------------------------------------------------------------------- iter_records
def test_iter_records_chunks_and_bad_rows(tmp_path: Path) -> None:
    f = write(tmp_path / "p.csv", "id,text\n1,a\n2,\n3,c\n4,d\n5,e\n")
    chunks = list(iter_records(f, chunk_size=2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    flat = [item for chunk in chunks for item in chunk]
    assert flat[0] == Record(line=2, text="a")
    assert flat[1] == BadRow(str(f), 3, "empty text")
    assert [r.line for r in flat] == [2, 3, 4, 5, 6]


def test_iter_records_checks_file_and_column_eagerly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        iter_records(tmp_path / "missing.txt")
    f = write(tmp_path / "p.csv", "body\nx\n")
    with pytest.raises(DataError, match=r"p\.csv:1: no text column 'text'; columns found: body"):
        iter_records(f)


def test_iter_records_txt(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", "one\ntwo\n")
    assert list(iter_records(f)) == [[Record(1, "one"), Record(2, "two")]]


def test_unclosed_quote_is_named(tmp_path: Path) -> None:
    f = write(tmp_path / "q.csv", 'text,label\nok,a\n"open,b\nc,z\n')
    with pytest.raises(DataError, match=r"q\.csv:3: expected 2 fields, found 1 .*unclosed quote"):
        read_table(f)


def test_data_and_metrics_import_neither_torch_nor_pyarrow() -> None:
    code = (
        "import sys, modelyard.data, modelyard.metrics; "
        "bad = [m for m in ('torch', 'pyarrow') if m in sys.modules]; "
        "sys.exit(f'imported: {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
