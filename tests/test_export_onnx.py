"""Export a real tiny run for every model kind × task, then check the bundle against the run.

Per combination: ONNX Runtime matches torch within ``export.parity_atol`` (the measured difference
is in the manifest), the bundle's test metrics equal the run's within 0.1 point, and a text's
scores do not depend on its batch-mates (one by one vs mixed with long texts, ``BATCH_ATOL``).

Each combination costs one training run and one dynamo export (~8 s on a quiet CPU), so the
default pass covers every kind and every task once (``DEFAULT_PAIRS``, ~40 s);
``MODELYARD_EXPORT_MATRIX=full`` runs all 16 combinations (~3 min).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.synthetic import BAD, FILLER, GOOD, write_rows

from modelyard.batch_predict import predict_file
from modelyard.bundle import Bundle, sha256_file
from modelyard.config import MODEL_KINDS, OWN_TOKENIZER_KINDS, load_config
from modelyard.errors import BundleError
from modelyard.exporters import export
from modelyard.runtime import evaluate_bundle, load
from modelyard.tasks import get_task, task_names
from modelyard.training import predict_texts
from modelyard.versions import list_versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH_ATOL = 1e-5  # a text's scores, alone vs batched with long texts (post-activation)
METRIC_ATOL = 1e-3  # 0.1 point on a 0..1 metric

MODELS: dict[str, dict[str, Any]] = {
    "lstm": {"kind": "lstm", "embedding_dim": 16, "hidden_size": 16, "bidirectional": True},
    "gru": {"kind": "gru", "embedding_dim": 16, "hidden_size": 16, "pooling": "mean"},
    "cnn": {"kind": "cnn", "embedding_dim": 16, "num_filters": 8, "kernel_sizes": [2, 3]},
    "transformer": {
        "kind": "transformer",
        "embedding_dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "ff_size": 32,
        "dropout": 0.0,
    },
    "bag_of_ngrams": {"kind": "bag_of_ngrams", "embedding_dim": 16, "buckets": 256},
    "linear_ngrams": {"kind": "linear_ngrams", "buckets": 4096, "word_window": 8},
}
LONG = " ".join(["the good film and the awful plot"] * 12)
DEFAULT_PAIRS = {
    ("lstm", "binary"),
    ("gru", "multilabel"),
    ("cnn", "multiclass"),
    ("transformer", "regression"),
    ("linear_ngrams", "multilabel"),
}
FULL_MATRIX = os.environ.get("MODELYARD_EXPORT_MATRIX") == "full"


def _example(rng: random.Random, task: str) -> tuple[str, str]:
    good, bad = rng.randint(0, 3), rng.randint(0, 3)
    words = rng.choices(GOOD, k=good) + rng.choices(BAD, k=bad)
    words += rng.choices(FILLER, k=rng.randint(1, 14))
    rng.shuffle(words)
    if task == "binary":
        label = "pos" if good >= bad else "neg"
    elif task == "multiclass":
        label = ["neg", "mixed", "pos"][(good > bad) - (good < bad) + 1]
    elif task == "multilabel":
        label = "|".join(x for x, n in (("good", good), ("bad", bad)) if n) or "none"
    else:
        label = str(good - bad + rng.random() / 10)
    return " ".join(words), label


class Runs:
    """Trains (once) and exports (once) the tiny run of each kind × task for this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple[str, str], tuple[Any, Bundle]] = {}

    def data(self, task: str) -> tuple[Path, Path]:
        train, test = self.root / f"{task}-train.csv", self.root / f"{task}-test.csv"
        if not train.exists():
            rng = random.Random(task)
            write_rows(train, [_example(rng, task) for _ in range(32)])
            write_rows(test, [_example(rng, task) for _ in range(16)])
        return train, test

    def get(self, kind: str, task: str) -> tuple[Any, Bundle]:
        if (kind, task) not in self.cache:
            import modelyard

            train, test = self.data(task)
            config = load_config(
                {
                    "name": f"{kind}-{task}",
                    "task": task,
                    "output_dir": str(self.root / "runs"),
                    "data": {"train": str(train), "test": str(test), "validation_split": 0.25},
                    "tokenizer": {"num_words": 99, "max_length": 12},
                    "model": MODELS[kind],
                    "train": {"epochs": 1, "batch_size": 16, "progress": False},
                }
            )
            run = modelyard.train(config)
            bundle = export(run, repo=self.root / "models")
            self.cache[(kind, task)] = (run, bundle)
        return self.cache[(kind, task)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("task", [t for t in task_names() if not get_task(t).generative])
# pretrained kinds need a model directory: test_models_pretrained.py round-trips the encoder;
# a causal LM has no classifier bundle (its export is GGUF / onnxruntime-genai, to come)
@pytest.mark.parametrize("kind", [k for k in MODEL_KINDS if k not in OWN_TOKENIZER_KINDS])
def test_bundle_matches_run(runs: Runs, kind: str, task: str) -> None:
    if not FULL_MATRIX and (kind, task) not in DEFAULT_PAIRS:
        pytest.skip("off the default kind/task pairs; MODELYARD_EXPORT_MATRIX=full runs it")
    run, bundle = runs.get(kind, task)
    manifest = bundle.manifest

    # checked here, independently of the export's own gate: torch and the bundle, from raw
    # texts the export never saw (tokenizer and post-processing included), agree
    fresh = [t for t, _ in (_example(random.Random(1000 + i), task) for i in range(16))]
    want_scores = predict_texts(run, fresh)
    got_scores = load(bundle.path).infer(load(bundle.path).encode(fresh))
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-4)
    print(f"\nparity {kind} x {task}: {np.abs(got_scores - want_scores).max():.3g}")

    # the bundle scores the test file like the run did
    _, test = runs.data(task)
    got = evaluate_bundle(bundle.path, test)
    want = run.test_metrics
    assert want is not None
    primary = get_task(task).primary_metric
    scale = max(1.0, abs(want[primary])) if task == "regression" else 1.0
    assert got[primary] == pytest.approx(want[primary], abs=METRIC_ATOL * scale)
    assert manifest.metrics is not None
    assert manifest.metrics[primary] == pytest.approx(want[primary])

    # batch invariance through the runtime: alone vs mixed with long texts
    predictor = load(bundle.path)
    texts = [t for t, _ in (_example(random.Random(i), task) for i in range(10))]
    alone = np.concatenate([predictor.infer(predictor.encode([t])) for t in texts])
    mixed_texts = [LONG, *texts[:5], LONG[:40], *texts[5:], LONG]
    mixed = predictor.infer(predictor.encode(mixed_texts))
    mixed = np.delete(mixed, [0, 6, len(mixed_texts) - 1], axis=0)
    np.testing.assert_allclose(mixed, alone, atol=BATCH_ATOL, rtol=0)


def test_manifest_records_the_run(runs: Runs) -> None:
    run, bundle = runs.get("cnn", "multiclass")
    m = bundle.manifest
    assert bundle.path == runs.root / "models" / "cnn-multiclass" / "1"
    assert (m.name, m.version, m.task, m.format) == ("cnn-multiclass", 1, "multiclass", "onnx")
    assert m.labels == run.labels.labels == ["mixed", "neg", "pos"]
    assert [(s.name, s.dtype) for s in m.inputs] == [
        ("input_ids", "int64"),
        ("attention_mask", "int64"),
    ]
    assert m.outputs[0].shape == ["batch", 3]
    assert (m.max_length, m.padding_side, m.pad_id) == (12, "right", 0)
    assert m.postprocess.activation == "softmax"
    assert m.config is not None and m.config["model"]["kind"] == "cnn"
    assert m.source == str(run.dir) and m.created_at and m.modelyard_version
    for name in ("model.onnx", "tokenizer.json"):
        assert m.files[name].sha256 == sha256_file(bundle.path / name)
    # the run's tokenizer ships unchanged
    assert (bundle.path / "tokenizer.json").read_bytes() == (
        run.dir / "tokenizer.json"
    ).read_bytes()
    on_disk = json.loads((bundle.path / "manifest.json").read_text())
    assert on_disk["schema_version"] == 1
    parity = on_disk["parity"]
    assert parity == m.parity and parity["atol"] == run.config.export.parity_atol
    # real texts from the run plus the synthetic edge lengths 1, 2, 3, half and full
    assert parity["num_texts"] >= 5 and parity["batch_sizes"] == [parity["num_texts"], 1]
    assert isinstance(parity["max_abs_diff"], float) and parity["max_abs_diff"] <= parity["atol"]


def test_predict_file_with_a_run_dir_matches_the_bundle(runs: Runs, tmp_path: Path) -> None:
    run, bundle = runs.get("cnn", "multiclass")
    _, test = runs.data("multiclass")
    predict_file(run.dir, test, tmp_path / "run.jsonl", progress=False)
    predict_file(bundle.path, test, tmp_path / "bundle.jsonl", progress=False)
    from_run = [json.loads(x) for x in (tmp_path / "run.jsonl").read_text().splitlines()]
    from_bundle = [json.loads(x) for x in (tmp_path / "bundle.jsonl").read_text().splitlines()]
    assert [r["label"] for r in from_run] == [r["label"] for r in from_bundle]
    np.testing.assert_allclose(
        [r["score"] for r in from_run], [r["score"] for r in from_bundle], atol=1e-5
    )


def test_parity_failure_refuses_and_leaves_nothing(
    runs: Runs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import modelyard.exporters.onnx as onnx_export

    run, _ = runs.get("cnn", "multiclass")

    def far_off(*args: Any, atol: float, **kwargs: Any) -> onnx_export.ParityReport:
        return onnx_export.ParityReport(max_abs_diff=0.5, atol=atol, num_texts=3, batch_sizes=[3])

    # the graph itself is not needed: parity is what refuses it
    monkeypatch.setattr(onnx_export, "export_graph", lambda *a, **k: a[3].write_bytes(b"x"))
    monkeypatch.setattr(onnx_export, "check_onnx_parity", far_off)
    with pytest.raises(BundleError, match=r"differs from torch by 0\.5 .*parity_atol=0\.0001"):
        export(run, repo=tmp_path)
    assert list_versions(tmp_path / run.config.name) == []
    assert not (tmp_path / run.config.name).exists() or not any(
        (tmp_path / run.config.name).iterdir()
    )
