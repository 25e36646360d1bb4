"""Compression end to end: tiny runs trained on a learnable task, every int8 path scored.

The task: a text is "pos" when it holds "good", "neg" when it holds "bad", among filler words
from a 300-word vocabulary (so the embedding table, as in a real text model, is most of the
graph's bytes). Tolerance for every quantized variant: at most 2 points of accuracy lost against
the fp32 bundle on 100 test texts (2 texts), and accuracy still >= 0.9.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers.synthetic import write_synthetic
from onnx import numpy_helper

from modelyard.bundle import read_manifest
from modelyard.compress import compress
from modelyard.config import load_config
from modelyard.measure import Measurement
from modelyard.training import Run, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILLER = [f"w{i}" for i in range(300)]
TOLERANCE = 2.0  # points of accuracy, i.e. 2 of the 100 test texts
FAST = {"latency_runs": 10, "throughput_batches": 1}


def write_data(directory: Path, n_train: int = 240, n_test: int = 100) -> dict[str, str]:
    return write_synthetic(directory, n_train, n_test, filler=FILLER, words=(3, 12))


def train_run(root: Path, kind: str) -> Run:
    data = write_data(root)
    model: dict[str, Any] = {"kind": kind, "embedding_dim": 32}
    if kind == "lstm":
        model["hidden_size"] = 16
    else:
        model.update(num_layers=1, num_heads=2, ff_size=32, dropout=0.0)
    config = load_config(
        {
            "name": f"tiny-{kind}",
            "task": "binary",
            "output_dir": str(root / "runs"),
            "data": {**data, "validation_split": 0.2},
            "tokenizer": {"num_words": 400, "max_length": 16},
            "model": model,
            "train": {
                "epochs": 4,
                "batch_size": 16,
                "optimizer": {"name": "adam", "lr": 0.02},
                "num_threads": 1,
                "progress": False,
            },
            "export": {"repo": str(root / "models")},
        }
    )
    return train(config)


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train_run(tmp_path_factory.mktemp("lstm"), "lstm")


@pytest.fixture(scope="module")
def lstm_variants(lstm_run: Run) -> list[Measurement]:
    return compress(lstm_run.dir, quantize=["int8-dynamic", "int8-static", "fp16"], **FAST)


def _op_types(bundle: str) -> set[str]:
    return {n.op_type for n in onnx.load(str(Path(bundle) / "model.onnx")).graph.node}


def _check_quantized(measured: list[Measurement]) -> dict[str, Measurement]:
    by_name = {m.name: m for m in measured}
    assert list(by_name) == ["fp32", "int8-dynamic", "int8-static", "fp16"]
    fp32 = by_name["fp32"]
    # scores select on the validation split (48 texts here); the test file (100) says it learnt
    # (0.89 for the LSTM with Keras' initialisation: a balanced task, chance is 0.5)
    assert fp32.test_score("accuracy") >= 0.85, "the tiny run did not learn the task"
    for name in ("int8-dynamic", "int8-static", "fp16"):
        m = by_name[name]
        assert m.drop <= TOLERANCE, (name, m.score, fp32.score)
        assert m.test_score("accuracy") >= 0.85 and m.rejected is None
        manifest = read_manifest(m.bundle)
        assert manifest.variant["name"] == name
        assert manifest.variant["quantization"]["mode"] == name
        assert manifest.variant["rejected"] is None
        assert manifest.metrics is not None
        # selected on validation (m.score); the manifest reports the test file
        assert manifest.metrics["accuracy"] == pytest.approx(m.test_metrics["accuracy"])
        assert m.test_size > 0 and "(validation, " in m.selected_on
        # the bundle's dtypes are kept: int64 ids and mask in, float32 logits out
        graph = onnx.load(str(Path(m.bundle) / "model.onnx")).graph
        assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT64] * 2
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for name in ("int8-dynamic", "int8-static"):
        m = by_name[name]
        assert m.size_mb < 0.5 * fp32.size_mb, (name, m.size_mb, fp32.size_mb)
        counts = read_manifest(m.bundle).variant["quantization"]["weights_by_dtype"]
        eight_bit = counts.get("int8", 0) + counts.get("uint8", 0)
        assert eight_bit > 0.9 * sum(counts.values()), counts  # the embedding table included
    assert by_name["fp16"].size_mb < 0.6 * fp32.size_mb
    return by_name


def test_lstm_int8_paths_keep_accuracy_and_shrink(lstm_variants: list[Measurement]) -> None:
    by_name = _check_quantized(lstm_variants)
    # the LSTM itself runs in int8 (quant_pre_process folded its weights into initializers)
    assert "DynamicQuantizeLSTM" in _op_types(by_name["int8-dynamic"].bundle)
    assert "QuantizeLinear" in _op_types(by_name["int8-static"].bundle)
    versions = [m.version for m in lstm_variants]
    assert versions == sorted(set(versions))  # each variant is its own new version


def test_transformer_int8_paths_keep_accuracy_and_shrink(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = train_run(tmp_path_factory.mktemp("transformer"), "transformer")
    measured = compress(run.dir, quantize=["int8-dynamic", "int8-static", "fp16"], **FAST)
    by_name = _check_quantized(measured)
    assert "MatMulInteger" in _op_types(by_name["int8-dynamic"].bundle)


def test_pruned_variant_is_sparse_permanent_and_fine_tuned(
    lstm_run: Run, lstm_variants: list[Measurement]
) -> None:
    measured = compress(
        lstm_run.dir, prune=0.5, finetune_epochs=1, quantize=["int8-dynamic"], **FAST
    )
    by_name = {m.name: m for m in measured}
    assert list(by_name) == ["fp32", "pruned50", "int8-dynamic", "pruned50+int8-dynamic"]
    # the fp32 export of this checkpoint is reused, not exported again
    assert by_name["fp32"].version == lstm_variants[0].version
    pruned = by_name["pruned50"]
    manifest = read_manifest(pruned.bundle)
    pruning = manifest.variant["pruning"]
    assert pruning["kind"] == "unstructured"
    assert pruning["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert pruning["finetune"]["steps"] > 0
    assert manifest.parity is not None and manifest.parity["max_abs_diff"] <= 1e-4
    # permanent: plain weights in the graph, half of them zero, no masks
    graph = onnx.load(str(Path(pruned.bundle) / "model.onnx")).graph
    assert not [t.name for t in graph.initializer if "mask" in t.name or "orig" in t.name]
    emb = next(numpy_helper.to_array(t) for t in graph.initializer if t.name == "embedding.weight")
    assert np.mean(emb == 0) == pytest.approx(0.5, abs=0.1)
    for name in ("pruned50", "pruned50+int8-dynamic"):
        assert by_name[name].drop <= TOLERANCE and by_name[name].rejected is None
    assert read_manifest(by_name["pruned50+int8-dynamic"].bundle).variant["pruning"] == pruning


def test_a_variant_that_loses_accuracy_is_rejected_with_the_reason(
    lstm_variants: list[Measurement],
) -> None:
    fp32 = Path(lstm_variants[0].bundle)
    # clipping every weight to ±0.001 wipes out what the model learnt
    measured = compress(fp32, quantize=["int8-dynamic"], clip=0.001, max_accuracy_drop=1.0, **FAST)
    bad = measured[1]
    assert bad.name == "clip0.001+int8-dynamic"
    assert bad.rejected is not None and bad.rejected.startswith("accuracy drop")
    assert bad.drop > 1.0
    manifest = read_manifest(bad.bundle)
    assert manifest.variant["rejected"] == bad.rejected
    assert manifest.variant["clip"]["fraction"] > 0.9
