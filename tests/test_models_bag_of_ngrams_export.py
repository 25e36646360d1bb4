"""bag_of_ngrams end to end: trained, exported to ONNX (and TFLite), quantized and served.

Each task trains a tiny run whose labels depend on word order ("not good" is bad), exports it
through ``modelyard.export`` (its parity gate against torch, dynamic batch and sequence axes),
and checks the bundle through the torch-free runtime: the run's metrics, and a text's scores
alone vs among long batch-mates. The binary run is also compressed (int8 dynamic and static)
and, when the [mobile] extra is installed, exported to TFLite.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers.synthetic import write_rows

from modelyard.bundle import Bundle
from modelyard.compress import compress
from modelyard.config import load_config
from modelyard.exporters import export
from modelyard.runtime import evaluate_bundle, load
from modelyard.tasks import get_task, task_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = {"kind": "bag_of_ngrams", "embedding_dim": 16, "ngrams": 3, "buckets": 4096}
MAX_LENGTH = 16
BATCH_ATOL = 1e-5
FILLER = [f"w{i}" for i in range(12)]
LONG = " ".join(["good food and not good service"] * 6)


def example(rng: random.Random, task: str) -> tuple[str, str]:
    """``good`` is positive unless ``not`` comes right before it: a bigram decides the label."""
    words = rng.choices(FILLER, k=rng.randint(2, 8))
    positive = rng.random() < 0.5
    words.insert(rng.randint(0, len(words)), "good" if positive else "not good")
    if task == "binary":
        label = "pos" if positive else "neg"
    elif task == "multiclass":
        label = ("pos" if positive else "neg") + ("-long" if len(words) > 6 else "-short")
    elif task == "multilabel":
        label = "|".join(["pos" if positive else "neg", *(["long"] if len(words) > 6 else [])])
    else:
        label = str(float(positive) + 0.01 * len(words))
    return " ".join(words), label


class Runs:
    """One tiny run and its ONNX bundle per task, trained and exported once for the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[str, tuple[Any, Bundle]] = {}

    def data(self, task: str) -> tuple[Path, Path]:
        train, test = self.root / f"{task}-train.csv", self.root / f"{task}-test.csv"
        if not train.exists():
            rng = random.Random(task)
            write_rows(train, [example(rng, task) for _ in range(160)])
            write_rows(test, [example(rng, task) for _ in range(60)])
        return train, test

    def get(self, task: str) -> tuple[Any, Bundle]:
        if task not in self.cache:
            import modelyard

            train, test = self.data(task)
            config = load_config(
                {
                    "name": f"bag-{task}",
                    "task": task,
                    "output_dir": str(self.root / "runs"),
                    "data": {"train": str(train), "test": str(test), "validation_split": 0.2},
                    "tokenizer": {"num_words": 99, "max_length": MAX_LENGTH},
                    "model": MODEL,
                    "train": {
                        "epochs": 15,
                        "batch_size": 16,
                        "optimizer": {"name": "adam", "lr": 0.05},
                        "num_threads": 1,
                        "progress": False,
                    },
                    "export": {"repo": str(self.root / "models")},
                }
            )
            run = modelyard.train(config)
            self.cache[task] = (run, export(run))
        return self.cache[task]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("bag"))


@pytest.mark.parametrize("task", [t for t in task_names() if not get_task(t).generative])
def test_onnx_bundle_matches_the_run(runs: Runs, task: str) -> None:
    run, bundle = runs.get(task)
    parity = bundle.manifest.parity
    assert parity is not None and parity["max_abs_diff"] <= parity["atol"]
    # the n-gram ids are computed inside the graph, from the ids the tokenizer gives
    ops = {n.op_type for n in onnx.load(str(bundle.path / "model.onnx")).graph.node}
    assert "Mod" in ops
    assert sorted(p.name for p in bundle.path.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]

    _, test = runs.data(task)
    got, want = evaluate_bundle(bundle.path, test), run.test_metrics
    primary = get_task(task).primary_metric
    assert got[primary] == pytest.approx(want[primary], abs=1e-3)
    if task == "binary":
        assert want["accuracy"] >= 0.9, "the bigram task was not learnt"

    # any batch size and length; a text's scores do not depend on its batch-mates
    predictor = load(bundle.path)
    texts = [example(random.Random(i), task)[0] for i in range(8)]
    alone = np.concatenate([predictor.infer(predictor.encode([t])) for t in texts])
    mixed = predictor.infer(predictor.encode([LONG, *texts[:4], LONG[:20], *texts[4:]]))
    np.testing.assert_allclose(np.delete(mixed, [0, 5], axis=0), alone, atol=BATCH_ATOL, rtol=0)


def test_int8_variants_keep_accuracy_and_shrink(runs: Runs) -> None:
    run, _ = runs.get("binary")
    measured = compress(
        run.dir,
        quantize=["int8-dynamic", "int8-static"],
        prune=0.3,
        latency_runs=5,
        throughput_batches=1,
    )
    by_name = {m.name: m for m in measured}
    fp32 = by_name["fp32"]
    assert fp32.score >= 0.9
    for name in ("int8-dynamic", "int8-static", "pruned30", "pruned30+int8-dynamic"):
        m = by_name[name]
        assert m.rejected is None and m.drop <= 2.0, (name, m.score, fp32.score)
    for name in ("int8-dynamic", "int8-static"):
        assert by_name[name].size_mb < 0.5 * fp32.size_mb


@pytest.mark.skipif(
    importlib.util.find_spec("litert_torch") is None
    or importlib.util.find_spec("ai_edge_litert") is None,
    reason="TFLite export needs the [mobile] extra",
)
def test_tflite_bundle_matches_torch(runs: Runs) -> None:
    from modelyard.exporters.tflite import export_tflite
    from modelyard.training import predict_texts

    run, _ = runs.get("binary")
    bundle = export_tflite(run, repo=runs.root / "tflite")
    parity = bundle.manifest.parity
    assert parity is not None and parity["max_abs_diff"] <= parity["atol"]
    assert parity["padding_invariance_diff"] <= parity["atol"]
    predictor = load(bundle.path)
    texts = [example(random.Random(i), "binary")[0] for i in range(6)]
    scores = np.concatenate([predictor.infer(predictor.encode([t])) for t in texts])
    np.testing.assert_allclose(scores, predict_texts(run, texts), atol=BATCH_ATOL, rtol=0)
