"""``modelyard.evaluate`` on training runs: metrics, per-class report and plots on disk."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from modelyard.config import load_config
from modelyard.errors import DataError, RunError
from modelyard.training import Run, predict_texts, train
from modelyard.training.evaluation import EvalResult, evaluate

pytestmark = pytest.mark.integration

WORDS = {"neg": "bad", "neutral": "okay", "pos": "good"}
FILLER = ["the", "a", "movie", "film", "plot", "story", "scene", "was", "is", "quite"]


def _write(path: Path, n: int, classes: list[str], seed: int) -> str:
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = classes[i % len(classes)]
            words = [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
            words.insert(rng.randint(0, len(words)), WORDS[label])
            writer.writerow([" ".join(words), label])
    return str(path)


def _train(directory: Path, task: str, classes: list[str]) -> Run:
    directory.mkdir(parents=True, exist_ok=True)
    config = load_config(
        {
            "name": task,
            "task": task,
            "output_dir": str(directory / "runs"),
            "data": {
                "train": _write(directory / "train.csv", 72, classes, 0),
                "test": _write(directory / "test.csv", 24, classes, 1),
                "validation_split": 0.25,
            },
            "tokenizer": {"num_words": 99, "max_length": 16},
            "model": {"kind": "cnn", "embedding_dim": 16, "num_filters": 8, "kernel_sizes": [1, 2]},
            "train": {
                "epochs": 4,
                "batch_size": 8,
                "optimizer": {"lr": 0.05},
                "num_threads": 1,
                "progress": False,
            },
        }
    )
    return train(config)


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _train(tmp_path_factory.mktemp("binary"), "binary", ["neg", "pos"])


def test_evaluate_run_dir_writes_metrics_report_and_pngs(binary_run: Run) -> None:
    result = evaluate(binary_run.dir)
    assert isinstance(result, EvalResult)
    assert result.out_dir == binary_run.dir / "eval"
    assert set(result.files) == {
        "metrics.json",
        "report.txt",
        "confusion_matrix.png",
        "learning_curves.png",
    }
    for path in result.files.values():
        assert path.is_file() and path.stat().st_size > 0
    for png in ("confusion_matrix.png", "learning_curves.png"):
        assert result.files[png].read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(result.files["metrics.json"].read_text())
    assert saved["num_examples"] == 24 and saved["checkpoint"] == "best"
    assert saved["metrics"] == pytest.approx(binary_run.test_metrics)
    assert result.metrics["accuracy"] >= 0.9
    assert result.confusion is not None and result.confusion.sum() == 24
    report = result.files["report.txt"].read_text()
    assert "precision" in report and "neg" in report and "pos" in report


def test_evaluate_any_csv_goes_to_its_own_folder(binary_run: Run, tmp_path: Path) -> None:
    other = _write(tmp_path / "extra.csv", 10, ["neg", "pos"], 7)
    result = evaluate(binary_run, data=other, which="last")
    assert result.out_dir == binary_run.dir / "eval" / "extra"
    assert result.num_examples == 10 and result.checkpoint == "last"
    assert (result.out_dir / "metrics.json").is_file()
    assert (result.out_dir / "confusion_matrix.png").is_file()


def test_evaluate_errors(binary_run: Run, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not found"):
        evaluate(tmp_path / "nope")
    with pytest.raises(RunError, match="not a run directory"):
        evaluate(tmp_path)
    unknown = _write(tmp_path / "unknown.csv", 3, ["neutral"], 0)
    with pytest.raises(DataError, match="neutral"):
        evaluate(binary_run, data=unknown)


def test_multiclass_run_evaluates_with_a_square_confusion_matrix(tmp_path: Path) -> None:
    run = _train(tmp_path, "multiclass", ["neg", "neutral", "pos"])
    result = evaluate(run.dir)
    assert result.confusion is not None and result.confusion.shape == (3, 3)
    assert [r.label for r in result.report] == ["neg", "neutral", "pos"]
    scores = predict_texts(run, ["good", "bad", "okay", "the film"])
    assert scores.shape == (4, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
