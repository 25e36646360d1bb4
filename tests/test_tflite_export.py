"""Export real tiny runs to LiteRT bundles and check them against torch and through the runtime.

fp32: LiteRT matches torch within ``export.parity_atol`` on identical padded ids, a text's output
does not depend on its padding or batch-mates, and ``modelyard.load`` predicts like the run.
int8-dynamic: within the stated :data:`INT8_ATOL` of torch, no accuracy lost on the test file,
and a smaller file. The backend pads rows to the static length and splits/pads the batch.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch ([mobile] extra)")
pytest.importorskip("ai_edge_litert", reason="the LiteRT runtime needs ai-edge-litert")

from helpers.synthetic import BAD, FILLER, GOOD, write_rows

from modelyard.bundle import Bundle
from modelyard.config import load_config
from modelyard.errors import BundleError
from modelyard.exporters.tflite import INT8_ATOL, export_tflite
from modelyard.runtime import load
from modelyard.runtime.litert import LiteRTBackend
from modelyard.versions import list_versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_LENGTH = 12
SCORE_ATOL = 1e-5  # post-activation scores, through the runtime vs torch
MODELS: dict[str, dict[str, Any]] = {
    # the seed's kind: LiteRT unrolls the recurrence over MAX_LENGTH steps
    "lstm": {"kind": "lstm", "embedding_dim": 16, "hidden_size": 16},
    "cnn": {"kind": "cnn", "embedding_dim": 16, "num_filters": 8, "kernel_sizes": [2, 3]},
    "transformer": {
        "kind": "transformer",
        "embedding_dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "ff_size": 32,
        "dropout": 0.0,
    },
}
LONG = " ".join(["the good film and the awful plot"] * 4)


def _example(rng: random.Random) -> tuple[str, str]:
    good, bad = rng.randint(0, 3), rng.randint(0, 3)
    words = rng.choices(GOOD, k=good) + rng.choices(BAD, k=bad) + rng.choices(FILLER, k=4)
    rng.shuffle(words)
    return " ".join(words), ["neg", "mixed", "pos"][(good > bad) - (good < bad) + 1]


class Exports:
    """Trains each kind's tiny multiclass run once and exports each variant once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: dict[str, Any] = {}
        self.bundles: dict[tuple[str, str | None, int], Bundle] = {}
        rng = random.Random(5)
        self.train, self.test = root / "train.csv", root / "test.csv"
        write_rows(self.train, [_example(rng) for _ in range(48)])
        write_rows(self.test, [_example(rng) for _ in range(24)])

    def run(self, kind: str) -> Any:
        if kind not in self.runs:
            import modelyard

            config = load_config(
                {
                    "name": f"{kind}-tiny",
                    "task": "multiclass",
                    "output_dir": str(self.root / "runs"),
                    "data": {"train": str(self.train), "test": str(self.test)},
                    "tokenizer": {"num_words": 99, "max_length": MAX_LENGTH},
                    "model": MODELS[kind],
                    "train": {"epochs": 2, "batch_size": 16, "progress": False},
                }
            )
            self.runs[kind] = modelyard.train(config)
        return self.runs[kind]

    def bundle(self, kind: str, quantize: str | None = None, batch_size: int = 1) -> Bundle:
        key = (kind, quantize, batch_size)
        if key not in self.bundles:
            self.bundles[key] = export_tflite(
                self.run(kind), repo=self.root / "models", quantize=quantize, batch_size=batch_size
            )
        return self.bundles[key]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    return Exports(tmp_path_factory.mktemp("tflite"))


@pytest.mark.parametrize("kind", list(MODELS))
def test_fp32_matches_torch_through_the_runtime(exports: Exports, kind: str) -> None:
    from modelyard.training import predict_texts

    # the CNN is exported with a static batch of 2: the runtime splits and fills batches
    batch_size = 2 if kind == "cnn" else 1
    bundle = exports.bundle(kind, batch_size=batch_size)
    run = exports.run(kind)
    m = bundle.manifest
    assert (m.format, m.model_file, m.max_length) == ("tflite", "model.tflite", MAX_LENGTH)
    assert m.variant["runtime"] == "litert" and m.variant["name"] == "tflite-fp32"
    assert [(s.name, s.dtype, s.shape) for s in m.inputs] == [
        ("input_ids", "int32", [batch_size, MAX_LENGTH]),
        ("attention_mask", "int32", [batch_size, MAX_LENGTH]),
    ]
    parity = m.parity
    assert parity is not None
    assert parity["max_abs_diff"] <= parity["atol"] == run.config.export.parity_atol
    assert parity["padding_invariance_diff"] <= parity["atol"]
    print(
        f"\ntflite fp32 {kind}: parity {parity['max_abs_diff']:.3g}, {parity['convert_seconds']}s"
    )

    # the runtime gives the run's scores, and a text's scores do not depend on its batch-mates
    predictor = load(bundle.path)
    assert predictor.backend.providers == ["LiteRT-CPU"]
    texts = [t for t, _ in (_example(random.Random(i)) for i in range(7))]
    alone = np.concatenate([predictor.infer(predictor.encode([t])) for t in texts])
    np.testing.assert_allclose(alone, predict_texts(run, texts), atol=SCORE_ATOL, rtol=0)
    mixed = predictor.infer(predictor.encode([LONG, *texts[:3], LONG[:30], *texts[3:]]))
    np.testing.assert_allclose(np.delete(mixed, [0, 4], axis=0), alone, atol=SCORE_ATOL, rtol=0)


def test_int8_dynamic_is_smaller_and_keeps_accuracy(exports: Exports) -> None:
    fp32 = exports.bundle("transformer")
    int8 = exports.bundle("transformer", quantize="int8-dynamic")
    m = int8.manifest
    assert (
        m.variant["quantization"] == "int8-dynamic" and m.variant["name"] == "tflite-int8-dynamic"
    )
    assert m.parity is not None
    assert m.parity["max_abs_diff"] <= m.parity["atol"] == INT8_ATOL
    accuracy = m.parity["accuracy"]
    assert accuracy["split"] == "test" and accuracy["num_texts"] == 24
    assert accuracy["drop"] <= accuracy["max_drop"]
    assert m.metrics is not None and m.metrics["accuracy"] == accuracy["litert"]
    assert m.files["model.tflite"].size < fp32.manifest.files["model.tflite"].size
    print(f"\ntflite int8 transformer: {m.parity['max_abs_diff']:.3g} from torch, {accuracy}")


def test_backend_pads_rows_and_splits_batches(exports: Exports) -> None:
    bundle = exports.bundle("cnn", batch_size=2)
    backend = LiteRTBackend(bundle.path / "model.tflite")
    assert (backend.batch_size, backend.max_length) == (2, MAX_LENGTH)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 15, size=(5, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # right padded
    ids[1, 4:] = 0
    got = backend.run(ids, mask)  # 5 rows: 2 + 2 + 1 filled
    assert got.shape == (5, 3) and got.dtype == np.float32
    one_by_one = np.concatenate([backend.run(ids[i : i + 1], mask[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(got, one_by_one, atol=1e-6, rtol=0)
    # left padding of the same row gives the same output
    left_ids, left_mask = np.roll(ids[1:2], 3, axis=1), np.roll(mask[1:2], 3, axis=1)
    np.testing.assert_allclose(backend.run(left_ids, left_mask), got[1:2], atol=1e-5, rtol=0)
    assert backend.run(ids[:0], mask[:0]).shape[0] == 0
    with pytest.raises(BundleError, match="more than the LiteRT model's static max_length 12"):
        backend.run(np.ones((1, 13), dtype=np.int64), np.ones((1, 13), dtype=np.int64))


def test_refusals_leave_no_bundle(
    exports: Exports, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import modelyard.exporters.tflite as tflite

    run = exports.run("cnn")
    converted = exports.bundle("cnn", batch_size=2).path / "model.tflite"
    with pytest.raises(BundleError, match="unknown TFLite quantization 'int4'"):
        export_tflite(run, repo=tmp_path, quantize="int4")

    def far_off(*args: Any, atol: float, **kwargs: Any) -> Any:
        return tflite.ParityReport(max_abs_diff=0.5, atol=atol, num_texts=3, batch_sizes=[3])

    # reuse a converted model (no second conversion); parity is what refuses it
    monkeypatch.setattr(
        tflite, "convert", lambda model, path, **k: path.write_bytes(converted.read_bytes())
    )
    monkeypatch.setattr(tflite, "check_litert_parity", far_off)
    with pytest.raises(BundleError, match=r"LiteRT differs from torch by 0\.5 .*tolerance 0\.0001"):
        export_tflite(run, repo=tmp_path)
    assert list_versions(tmp_path / run.config.name) == []


def test_a_pretrained_encoder_exports_at_a_fixed_length_in_fp32_and_int8(tmp_path: Path) -> None:
    # a tiny random BERT, fine-tuned for a step, down the mobile road: static (1, max_length)
    # inputs, the same scores as torch through the runtime, int8 smaller and still close
    from test_models_pretrained import save_tiny_bert, tiny_run_config

    import modelyard
    from modelyard.training import predict_texts

    run = modelyard.train(tiny_run_config(tmp_path, str(save_tiny_bert(tmp_path / "bert"))))
    fp32 = export_tflite(run, repo=tmp_path / "models")
    int8 = export_tflite(run, repo=tmp_path / "models", quantize="int8-dynamic")
    assert [s.shape for s in fp32.manifest.inputs] == [[1, 24], [1, 24]]
    for bundle in (fp32, int8):
        parity = bundle.manifest.parity
        assert parity is not None and parity["padding_invariance_diff"] <= parity["atol"]
        assert parity["max_abs_diff"] <= parity["atol"]
    # smaller, not 4x: the quantizer leaves a tiny model's small tensors in float
    size = {
        b.manifest.variant["name"]: (b.path / "model.tflite").stat().st_size for b in (fp32, int8)
    }
    assert size["tflite-int8-dynamic"] < size["tflite-fp32"]
    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 " * 3]
    predictor = load(fp32.path)
    got = predictor.infer(predictor.encode(texts))
    np.testing.assert_allclose(got, predict_texts(run, texts), atol=SCORE_ATOL, rtol=0)
