"""Streamed file prediction: CSV/JSONL/text/stdin in, JSONL out, bad rows reported and counted."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers.bundles import TEXTS, make_bundle

from modelyard.batch_predict import _predict_chunk, predict_file
from modelyard.data import BadRow, Record
from modelyard.errors import BundleError, DataError
from modelyard.runtime import Prediction, load

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("models"), "multiclass", name="topics").path.parent


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_csv_in_jsonl_out_with_a_bad_row(bundle_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text(
        'id,body\n1,"a great film"\n2,""\n3,"never, again"\n4,too,many\n5,"multi\nline"\n'
    )
    out = tmp_path / "out" / "preds.jsonl"
    summary = predict_file(bundle_path, src, out, text_column="body", progress=False)
    rows = read_jsonl(out)
    assert [r["line"] for r in rows] == [2, 3, 4, 5, 6]
    assert rows[1] == {"line": 3, "error": "empty text"}
    assert rows[3]["line"] == 5 and "expected 2 fields" in rows[3]["error"]
    expected = load(bundle_path).predict(["a great film", "never, again", "multi\nline"])
    for row, pred in zip([rows[0], rows[2], rows[4]], expected, strict=True):
        assert row == {"line": row["line"], **pred.to_dict()}
    assert (summary.rows, summary.predicted, summary.failed) == (5, 3, 2)
    assert summary.output == str(out)


def test_jsonl_and_chunks_keep_order(bundle_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": t}) for t in TEXTS * 3]
    lines.insert(4, "{broken json")
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "preds.jsonl"
    summary = predict_file(bundle_path, src, out, chunk_size=4, progress=False)
    rows = read_jsonl(out)
    assert [r["line"] for r in rows] == list(range(1, len(lines) + 1))
    assert "not valid JSON" in rows[4]["error"]
    expected = load(bundle_path).predict(TEXTS * 3)
    assert [r["label"] for r in rows if "error" not in r] == [p.label for p in expected]
    assert (summary.rows, summary.failed) == (25, 1)


def test_plain_text_lines(bundle_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("a great film\n\nboring\n")
    out = tmp_path / "preds.jsonl"
    summary = predict_file(bundle_path, src, out, progress=False)
    assert [r["line"] for r in read_jsonl(out)] == [1, 3]
    assert summary.failed == 0


@pytest.mark.parametrize(
    ("payload", "text_column"),
    [
        ("a great film\nboring\n", "text"),
        ('{"text": "a great film"}\n{"text": "boring"}\n', "text"),
        ("review,stars\na great film,5\nboring,1\n", "review"),
    ],
)
def test_stdin_to_stdout(
    bundle_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    payload: str,
    text_column: str,
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(payload.encode())))
    summary = predict_file(bundle_path, "-", "-", text_column=text_column, progress=False)
    rows = [json.loads(x) for x in capsysbinary.readouterr().out.decode().splitlines()]
    assert len(rows) == 2 and all("label" in r for r in rows)
    assert (summary.rows, summary.failed, summary.output) == (2, 0, "-")


def test_a_failing_row_does_not_stop_the_others() -> None:
    def scorer(texts: Sequence[str]) -> list[Prediction]:
        if any("BOOM" in t for t in texts):
            raise ValueError("cannot score BOOM")
        return [Prediction(label="x", score=1.0, scores={"x": 1.0}) for _ in texts]

    chunk: list[Record | BadRow] = [
        Record(line=2, text="fine"),
        BadRow("in.csv", 3, "empty text"),
        Record(line=4, text="BOOM"),
        Record(line=5, text="also fine"),
    ]
    rows = _predict_chunk(scorer, chunk)
    assert [r["line"] for r in rows] == [2, 3, 4, 5]
    assert rows[0]["label"] == rows[3]["label"] == "x"
    assert rows[1] == {"line": 3, "error": "empty text"}
    assert rows[2] == {"line": 4, "error": "prediction failed: cannot score BOOM"}


def test_missing_input_and_bad_source(bundle_path: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        predict_file(bundle_path, tmp_path / "nope.csv", tmp_path / "o.jsonl", progress=False)
    (tmp_path / "in.txt").write_text("hello\n")
    with pytest.raises(BundleError):
        predict_file(tmp_path / "nothing", tmp_path / "in.txt", tmp_path / "o.jsonl")
