"""The HTML run report and the variants plot, from hand-made measurements and real small PNGs."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from modelyard.choice import choose
from modelyard.config import TargetConfig
from modelyard.measure import Measurement
from modelyard.plots import plot_confusion_matrix, plot_learning_curves
from modelyard.report.html import ReportContent, render_report, write_report
from modelyard.report.tradeoff import variants_plot

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def measurement(
    name: str, fmt: str, size: float, p99: float, score: float, drop: float, **kw: object
) -> Measurement:
    return Measurement(
        name=name,
        format=fmt,
        bundle=f"models/demo/{len(name)}",
        version=len(name),
        size_mb=size,
        p50_ms=p99 * 0.6,
        p99_ms=p99,
        throughput=2000.0 / p99,
        metrics={"accuracy": score},
        score=score,
        drop=drop,
        rejected=kw.get("rejected"),  # type: ignore[arg-type]
    )


VARIANTS = [
    measurement("fp32", "onnx", 4.2, 3.1, 0.912, 0.0),
    measurement("int8-dynamic", "onnx", 1.1, 1.9, 0.908, 0.4),
    measurement("int8-static", "onnx", 1.0, 1.7, 0.87, 4.2, rejected="accuracy drop 4.2 > 1"),
    measurement("fp16", "onnx", 2.1, 3.4, 0.911, 0.1),
    measurement("tflite-fp32", "tflite", 4.3, 2.6, 0.912, 0.0),
]
TARGETS = {
    "server": TargetConfig(format="onnx", max_p99_ms=20),
    "edge": TargetConfig(format="onnx", max_size_mb=2),
    "mobile": TargetConfig(format="tflite", max_size_mb=1),
}


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("report")
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 10}
        for e in range(1, 4)
    ]
    choices = choose(TARGETS, VARIANTS)
    return {
        "tradeoff": variants_plot(VARIANTS, choices, out / "variants.png", metric="accuracy"),
        "Learning curves": plot_learning_curves(history, out / "curves.png"),
        "Confusion matrix": plot_confusion_matrix(
            np.array([[9, 1], [2, 8]]), ["neg", "pos"], out / "cm.png"
        ),
    }


def content(pngs: dict[str, Path], **overrides: object) -> ReportContent:
    fields: dict[str, object] = {
        "name": "demo",
        "task": "binary",
        "metric": "accuracy",
        "data": {"train": "data/train.csv", "measured on": "data/test.csv (200 texts)"},
        "test_metrics": {"accuracy": 0.912, "f1": 0.9},
        "variants": VARIANTS,
        "choices": choose(TARGETS, VARIANTS),
        "targets": TARGETS,
        "tradeoff_png": pngs["tradeoff"],
        "images": {k: v for k, v in pngs.items() if k != "tradeoff"},
        "notes": ["tflite-int8-static not built: LiteRT has no static int8 here"],
        "created_at": "2025-01-01 00:00 UTC",
        "run_dir": "runs/demo",
    }
    fields.update(overrides)
    return ReportContent(**fields)  # type: ignore[arg-type]


def test_variants_plot_is_a_png(pngs: dict[str, Path]) -> None:
    data = pngs["tradeoff"].read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_variants_plot_without_measurements(tmp_path: Path) -> None:
    nan = float("nan")
    broken = [measurement("x", "onnx", 1.0, nan, nan, nan)]
    for variants in ([], broken):
        path = variants_plot(variants, {}, tmp_path / f"v{len(variants)}.png")
        assert path.read_bytes().startswith(PNG_MAGIC)


def test_report_shows_choices_table_and_embedded_images(pngs: dict[str, Path]) -> None:
    page = render_report(content(pngs))
    assert page.startswith("<!DOCTYPE html>")
    # one table row per variant, the chosen and rejected ones marked
    rows = re.findall(r"<tr class='([a-z]*)'><td title='[^']*'>([^<]+)</td>", page)
    assert [name for _, name in rows] == [m.name for m in VARIANTS]
    status = dict((name, css) for css, name in rows)
    assert status["fp32"] == "chosen"  # server: the most accurate under 20 ms
    assert status["int8-dynamic"] == "chosen"  # edge: under 2 MB
    assert status["int8-static"] == "rejected"
    assert "chosen for server" in page and "chosen for edge" in page
    # the impossible mobile budget is spelled out
    assert (
        "no variant fits: smallest tflite variant tflite-fp32 is 4.3 MB &gt; max_size_mb 1" in page
    )
    assert page.count("class='card ok'") == 2 and page.count("class='card fail'") == 1
    # self-contained: every image inline, nothing fetched
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(uris) == 3
    assert all(base64.b64decode(u).startswith(PNG_MAGIC) for u in uris)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page
    for text in ("demo", "binary", "data/test.csv (200 texts)", "0.9120", "LiteRT has no"):
        assert text in page


def test_report_escapes_text(pngs: dict[str, Path]) -> None:
    evil = measurement("<script>alert(1)</script>", "onnx", 1.0, 1.0, 0.9, 0.0)
    page = render_report(
        content(
            pngs,
            name="a<b",
            variants=[evil],
            choices=choose({"x&y": TargetConfig()}, [evil]),
            targets={"x&y": TargetConfig()},
            notes=["<img src=x onerror=alert(1)>"],
        )
    )
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "x&amp;y" in page and "<title>a&lt;b" in page


def test_report_without_targets_variants_or_images(tmp_path: Path) -> None:
    page = render_report(
        ReportContent(
            name="bare",
            task="regression",
            metric="rmse",
            data={},
            test_metrics=None,
            variants=[],
            choices={},
            targets={},
            images={"Learning curves": tmp_path / "missing.png"},
            higher_is_better=False,
        )
    )
    assert "No <code>targets:</code>" in page
    assert "No variant was measured" in page
    assert "image missing" in page
    assert "lower is better" in page


def test_write_report_is_atomic_and_complete(pngs: dict[str, Path], tmp_path: Path) -> None:
    path = write_report(content(pngs), tmp_path / "run" / "report.html")
    assert path == tmp_path / "run" / "report.html"
    assert path.read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left
