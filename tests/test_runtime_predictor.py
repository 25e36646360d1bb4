"""The torch-free runtime: load a bundle, predict, and refuse damaged or mismatched bundles."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers.bundles import LABELS, TEXTS, make_bundle

import modelyard
from modelyard.errors import BundleError, ConfigError
from modelyard.runtime import Prediction, Predictor, list_versions, load
from modelyard.runtime.predictor import apply_activation, to_predictions

pytestmark = pytest.mark.unit

LONG = " ".join(["great lovely boring awful film"] * 40)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for task in LABELS:
        make_bundle(root, task)
    return root


@pytest.mark.parametrize("task", list(LABELS))
def test_predict_shapes_per_task(repo: Path, task: str) -> None:
    predictor = load(repo / f"tiny-{task}")
    assert isinstance(predictor, Predictor)
    assert (predictor.task, predictor.version, predictor.labels) == (task, 1, LABELS[task])
    preds = predictor.predict(TEXTS)
    assert len(preds) == len(TEXTS)
    assert all(isinstance(p, Prediction) for p in preds)
    for p in preds:
        if task == "regression":
            assert p.label is None and p.scores == {} and p.labels is None
            assert np.isfinite(p.score)
            continue
        assert set(p.scores) == set(LABELS[task])
        assert p.label in LABELS[task]
        assert p.score == pytest.approx(p.scores[p.label])
        if task == "multiclass":
            assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-5)
            assert p.label == max(p.scores, key=p.scores.__getitem__)
        if task == "binary":
            assert p.scores["neg"] + p.scores["pos"] == pytest.approx(1.0)
            assert (p.label == "pos") == (p.scores["pos"] >= 0.5)
        if task == "multilabel":
            assert p.labels == [x for x in LABELS[task] if p.scores[x] >= 0.5]
        else:
            assert p.labels is None
    json.dumps([p.to_dict() for p in preds])  # JSON-ready


@pytest.mark.parametrize("task", list(LABELS))
def test_batch_invariance(repo: Path, task: str) -> None:
    """A text's scores do not depend on its batch-mates, their lengths or the sub-batch size."""
    predictor = load(repo / f"tiny-{task}")
    alone = np.concatenate([predictor.infer(predictor.encode([t])) for t in TEXTS])
    mixed_texts = [LONG, *TEXTS[:4], LONG[:50], *TEXTS[4:], LONG]
    mixed = predictor.infer(predictor.encode(mixed_texts))
    mixed = np.delete(mixed, [0, 5, len(mixed_texts) - 1], axis=0)
    np.testing.assert_allclose(mixed, alone, atol=1e-6)
    predictor.max_batch = 3
    np.testing.assert_allclose(predictor.infer(predictor.encode(TEXTS)), alone, atol=1e-6)


def test_infer_keeps_input_order_across_sub_batches(repo: Path) -> None:
    predictor = load(repo / "tiny-multiclass", max_batch=2)
    seqs = predictor.encode([LONG, "never", "a great film", LONG[:30], "boring"])
    got = predictor.infer(seqs)
    for i, seq in enumerate(seqs):
        np.testing.assert_allclose(got[i], predictor.infer([seq])[0], atol=1e-6)


def test_empty_input_and_bad_types(repo: Path) -> None:
    predictor = load(repo / "tiny-binary")
    assert predictor.predict([]) == []
    assert predictor.infer([]).shape == (0, 1)
    with pytest.raises(TypeError, match="list of texts"):
        predictor.predict("one text")
    with pytest.raises(TypeError, match="text 1 is int"):
        predictor.predict(["fine", 3])  # type: ignore[list-item]


def test_empty_and_unknown_texts_still_predict(repo: Path) -> None:
    preds = load(repo / "tiny-multiclass").predict(["", "zzz qqq", "   "])
    assert len(preds) == 3 and all(p.label in LABELS["multiclass"] for p in preds)


def test_truncation_to_max_length(repo: Path) -> None:
    predictor = load(repo / "tiny-binary")
    assert max(len(s) for s in predictor.encode([LONG])) == predictor.manifest.max_length


def test_default_version_by_default_any_on_request(tmp_path: Path) -> None:
    make_bundle(tmp_path, "binary", name="m", seed=0)
    make_bundle(tmp_path, "binary", name="m", seed=1)
    assert list_versions(tmp_path / "m") == [1, 2]
    # a new version is not served until an alias moves: the default stays the first
    latest, first = load(tmp_path / "m", version=2), load(tmp_path / "m")
    assert (latest.version, first.version) == (2, 1)
    assert load(tmp_path / "m" / "1").version == 1
    assert latest.predict(TEXTS)[0].scores != first.predict(TEXTS)[0].scores
    with pytest.raises(BundleError, match="no version 3"):
        load(tmp_path / "m", version=3)


def test_top_level_load_is_the_runtime_load(repo: Path) -> None:
    assert modelyard.load(repo / "tiny-binary").task == "binary"


def test_threads_and_providers(repo: Path) -> None:
    predictor = load(repo / "tiny-binary", intra_op_threads=1, inter_op_threads=1, providers="auto")
    assert predictor.backend.providers[-1] == "CPUExecutionProvider"
    predictor.warmup()
    with pytest.raises(ConfigError, match="not available"):
        load(repo / "tiny-binary", providers=["NoSuchExecutionProvider"])


def test_expected_task_mismatch_is_an_error(repo: Path) -> None:
    with pytest.raises(BundleError, match="expected 'regression'"):
        load(repo / "tiny-binary", task="regression")


def test_corrupted_model_is_a_clear_error(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "binary")
    model = bundle.path / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"model\.onnx: corrupted"):
        load(bundle.path)


def test_unreadable_graph_with_matching_checksum_is_a_clear_error(tmp_path: Path) -> None:
    # a bundle whose manifest was (wrongly) rewritten to match a broken graph still fails
    # loudly at load time rather than predicting
    from modelyard.bundle import MANIFEST_FILE, manifest_digest, sha256_file

    bundle = make_bundle(tmp_path, "binary")
    model = bundle.path / "model.onnx"
    model.write_bytes(b"not an onnx graph")
    data = json.loads((bundle.path / MANIFEST_FILE).read_text())
    data["files"]["model.onnx"] = {"size": model.stat().st_size, "sha256": sha256_file(model)}
    data["digest"] = manifest_digest(data)
    (bundle.path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        load(bundle.path)


def test_activations_are_stable() -> None:
    x = np.array([[-1000.0, 0.0, 1000.0]], dtype=np.float32)
    np.testing.assert_allclose(apply_activation(x, "sigmoid"), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(apply_activation(x, "softmax"), [[0.0, 0.0, 1.0]])
    assert not np.isnan(apply_activation(x, "softmax")).any()


def test_to_predictions_threshold_and_top_k() -> None:
    (p,) = to_predictions("binary", ["neg", "pos"], np.array([[0.3]]), threshold=0.25)
    assert (p.label, p.score) == ("pos", pytest.approx(0.3))
    (q,) = to_predictions("multiclass", ["a", "b", "c"], np.array([[0.2, 0.5, 0.3]]), top_k=2)
    assert list(q.scores) == ["b", "c"]
    (r,) = to_predictions("multilabel", ["a", "b", "c"], np.array([[0.9, 0.1, 0.6]]))
    assert (r.label, r.labels) == ("a", ["a", "c"])
    (s,) = to_predictions("regression", [], np.array([[3.5]]))
    assert s.to_dict() == {"label": None, "score": 3.5, "scores": {}}


def test_runtime_never_imports_torch(repo: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import modelyard.runtime as rt
        p = rt.load({str(repo / "tiny-multiclass")!r})
        p.warmup()
        preds = p.predict(["a great film", "boring"])
        assert len(preds) == 2, preds
        rt.evaluate_bundle  # the evaluation entry point is importable too
        import modelyard.bundle, modelyard.batch_predict
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not bad, bad
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
