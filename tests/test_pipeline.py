"""``run_pipeline``: the whole road on a tiny synthetic dataset, and its summary."""

from __future__ import annotations

import csv
import json
import random
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from modelyard.choice import choose
from modelyard.compress import compress
from modelyard.compress.formats import FormatRequest, tflite_variants
from modelyard.config import TargetConfig, load_config
from modelyard.errors import BundleError
from modelyard.measure import Measurement
from modelyard.pipeline import format_summary, run_pipeline
from modelyard.runtime import load
from modelyard.versions import default_version, read_record

WORDS = {"neg": "bad", "pos": "good"}
FILLER = ["the", "a", "movie", "film", "plot", "story", "scene", "was", "is", "quite"]


def _write(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = ["neg", "pos"][i % 2]
            words = [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
            words.insert(rng.randint(0, len(words)), WORDS[label])
            writer.writerow([" ".join(words), label])
    return str(path)


def _config(tmp: Path, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "road",
        "task": "binary",
        "output_dir": str(tmp / "runs"),
        "data": {
            "train": _write(tmp / "train.csv", 48, 0),
            "test": _write(tmp / "test.csv", 24, 1),
            "validation_split": 0.25,
        },
        "tokenizer": {"num_words": 99, "max_length": 16},
        "model": {"kind": "cnn", "embedding_dim": 16, "num_filters": 8, "kernel_sizes": [1, 2]},
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "optimizer": {"lr": 0.05},
            "num_threads": 1,
            "progress": False,
        },
        "compress": {"quantize": ["int8-dynamic"], "max_accuracy_drop": 100.0},
        "export": {"formats": ["onnx"], "repo": str(tmp / "models")},
        "targets": {
            "server": {"format": "onnx", "max_p99_ms": 10_000},
            "edge": {"format": "onnx", "max_size_mb": 0.000001},
        },
    }
    raw.update(extra)
    return raw


@pytest.mark.integration
@pytest.mark.slow
def test_run_walks_the_road_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(_config(tmp_path))
    result = run_pipeline(config)

    names = [m.name for m in result.variants]
    assert names[0] == "fp32" and "int8-dynamic" in names
    assert all(m.format == "onnx" for m in result.variants)
    assert all(Path(m.bundle).is_dir() for m in result.variants)
    # the generous server budget is met; a size budget of one byte is not, and says so
    server, edge = result.choices["server"], result.choices["edge"]
    assert server.variant is not None and server.variant in result.variants
    assert edge.variant is None
    assert edge.reason.startswith("edge: no variant fits: smallest onnx variant ")
    assert "MB > max_size_mb 1e-06" in edge.reason

    saved = json.loads(result.variants_path.read_text(encoding="utf-8"))
    assert saved["metric"] == "accuracy" and saved["higher_is_better"] is True
    assert [v["name"] for v in saved["variants"]] == names
    assert saved["choices"]["server"]["variant"] == server.variant.name
    assert saved["choices"]["edge"]["variant"] is None

    page = result.report_path.read_text(encoding="utf-8")
    assert result.report_path == result.run.dir / "report.html"
    assert page.count("src='data:image/png;base64,") == 3  # variants, curves, confusion
    assert "chosen for server" in page and "no variant fits" in page

    out = capsys.readouterr().out
    assert "int8-dynamic" in out and "server  -> " in out and "edge    -> none: " in out
    assert f"report: {result.report_path}" in out

    # selected on validation, reported on test: each says where it came from
    for m in result.variants:
        assert "(validation, 12 texts)" in m.selected_on and m.num_scored == 12
        assert m.test_size == 24 and "accuracy" in m.test_metrics
    assert "validation accuracy" in page and "test accuracy" in page
    assert "95% CI" in page  # the trained model's test accuracy with its interval

    # what is served is what was chosen: the server alias names the chosen version ...
    model_dir = tmp_path / "models" / "road"
    assert read_record(model_dir).aliases["server"] == server.variant.version
    assert saved["choices"]["server"]["alias"] == "server"
    assert default_version(model_dir, alias="server") == server.variant.version
    assert load(model_dir, "server").version == server.variant.version
    # ... and a later compress into the same repository does not move it
    compress(result.run.dir, quantize=["fp16"], latency_runs=2, throughput_batches=1)
    assert default_version(model_dir, alias="server") == server.variant.version
    assert load(model_dir).version == read_record(model_dir).aliases["default"] == 1


@pytest.mark.unit
def test_tflite_that_cannot_be_built_is_a_note_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str | None] = []

    def no_litert(run: Any, *, repo: Any, quantize: str | None = None) -> Any:
        calls.append(quantize)
        raise BundleError("TFLite export needs litert-torch (pip install 'modelyard[mobile]')")

    fake = types.ModuleType("modelyard.exporters.tflite")
    fake.TFLITE_QUANTIZERS = {"int8-dynamic": None}  # type: ignore[attr-defined]
    fake.export_tflite = no_litert  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelyard.exporters.tflite", fake)
    raw = _config(tmp_path, targets={"mobile": {"format": "tflite"}})
    raw["compress"]["quantize"] = ["int8-dynamic", "fp16"]
    config = load_config(raw)
    notes: list[str] = []
    request = FormatRequest(None, config, None, [], 0.9, notes)  # type: ignore[arg-type]
    assert tflite_variants(request) == []
    assert calls == [None]  # no quantized attempt once fp32 failed
    assert notes == [
        "no TFLite fp16 variant: the LiteRT exporter supports int8-dynamic",
        "tflite-fp32 not built: TFLite export needs litert-torch (pip install 'modelyard[mobile]')",
    ]

    # the exporter module itself cannot be imported (e.g. ai-edge-litert missing)
    monkeypatch.setitem(sys.modules, "modelyard.exporters.tflite", None)
    notes.clear()
    assert tflite_variants(request) == []
    assert len(notes) == 1 and notes[0].startswith("no TFLite variants: ")


@pytest.mark.unit
def test_summary_lists_variants_and_choices() -> None:
    def m(name: str, size: float, rejected: str | None = None) -> Measurement:
        return Measurement(
            name=name,
            format="onnx",
            bundle=f"models/x/{name}",
            version=1,
            size_mb=size,
            p50_ms=1.0,
            p99_ms=2.0,
            throughput=500.0,
            metrics={"accuracy": 0.9},
            score=0.9,
            drop=0.0,
            rejected=rejected,
        )

    variants = [m("fp32", 4.0), m("int8-dynamic", 1.0), m("int8-static", 1.0, "drop 3 > 1")]
    choices = choose({"server": TargetConfig(), "tiny": TargetConfig(max_size_mb=0.5)}, variants)
    text = format_summary(variants, choices, "accuracy", ["a note"])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["variant", "format", "size"]
    assert "rejected: drop 3 > 1" in lines[3]
    assert "server  -> int8-dynamic (models/x/int8-dynamic; alias server -> version 1)" in text
    assert "tiny    -> none: no variant fits: smallest onnx variant int8-dynamic is 1 MB" in text
    assert lines[-1] == "note: a note"
