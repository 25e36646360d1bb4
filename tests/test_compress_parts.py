"""Compression parts on tiny models: clipping, pruning (no export), quantizing a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers.bundles import TEXTS, labelled_csv, make_bundle
from onnx import TensorProto, helper, numpy_helper

from modelyard.bundle import read_manifest
from modelyard.compress import QUANTIZERS, clip_weights, compress, parse_clip, prune_model
from modelyard.compress.clip import ClipSpec, weight_initializers
from modelyard.config import CNNConfig, RNNConfig, TransformerConfig
from modelyard.errors import ConfigError, DataError
from modelyard.models import build_model

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------- clipping
def test_parse_clip_reads_values_and_percentiles() -> None:
    assert parse_clip(3.0) == ClipSpec("value", 3.0)
    assert parse_clip("2.5") == ClipSpec("value", 2.5)
    assert parse_clip("p99.9") == ClipSpec("percentile", 99.9)
    assert parse_clip("99%") == ClipSpec("percentile", 99.0)
    assert parse_clip(3.0).name == "clip3" and parse_clip("p99.9").name == "clip-p99.9"
    for bad in (0, -1.0, "p0", "p101", "lots"):
        with pytest.raises(ConfigError, match=r"compress\.clip"):
            parse_clip(bad)


def _graph() -> onnx.ModelProto:
    """Gather(emb, ids) -> MatMul(w) + bias: two weights and a bias."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 4)).astype(np.float32)
    emb[3, 2] = 50.0  # an outlier
    w = rng.normal(size=(4, 2)).astype(np.float32)
    bias = np.array([9.0, -9.0], dtype=np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["x"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Add", ["y", "bias"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(a, n) for a, n in ((emb, "emb"), (w, "w"), (bias, "bias"))],
    )
    return helper.make_model(graph)


def test_clip_weights_touches_weights_only() -> None:
    model = _graph()
    assert weight_initializers(model) == ["emb", "w"]
    report = clip_weights(model, parse_clip(3.0))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.abs(arrays["emb"]).max() <= 3.0 and np.abs(arrays["w"]).max() <= 3.0
    assert arrays["bias"].tolist() == [9.0, -9.0]  # a bias is not a weight
    assert report.total == 48 and report.clipped >= 1
    assert report.to_dict()["fraction"] == pytest.approx(report.clipped / 48)


def test_clip_by_percentile_is_per_tensor() -> None:
    model = _graph()
    report = clip_weights(model, parse_clip("p90"))
    emb = numpy_helper.to_array(model.graph.initializer[0])
    assert np.abs(emb).max() == pytest.approx(report.tensors["emb"])
    assert report.tensors["emb"] < 50.0
    assert 0.05 < report.fraction < 0.2


# ----------------------------------------------------------------------------------- pruning
def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    common = {"task": "multiclass", "vocab_size": 99, "num_outputs": 3, "max_length": 12}
    return {
        "lstm": build_model(
            RNNConfig(
                kind="lstm", embedding_dim=16, hidden_size=32, num_layers=2, bidirectional=True
            ),
            **common,
        ),
        "gru": build_model(RNNConfig(kind="gru", embedding_dim=16, hidden_size=32), **common),
        "cnn": build_model(
            CNNConfig(kind="cnn", embedding_dim=16, num_filters=32, kernel_sizes=[2, 3]), **common
        ),
        "transformer": build_model(
            TransformerConfig(kind="transformer", embedding_dim=32, num_heads=2, ff_size=32),
            **common,
        ),
    }


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("kind", ["lstm", "gru", "cnn", "transformer"])
def test_structured_pruning_at_zero_keeps_the_function(kind: str) -> None:
    model = _models()[kind].eval()
    ids, mask = _batch()
    with torch.no_grad():
        before = model(ids, mask)
        result = prune_model(model, 0.0, "structured")
        after = result.model(ids, mask)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert result.report.parameters_after == result.report.parameters_before


@pytest.mark.parametrize("kind", ["lstm", "gru", "cnn", "transformer"])
def test_structured_pruning_rebuilds_smaller_layers(kind: str) -> None:
    model = _models()[kind].eval()
    ids, mask = _batch()
    result = prune_model(model, 0.5, "structured")
    report = result.report
    assert report.parameters_after < report.parameters_before
    assert report.zeros == report.parameters_before - report.parameters_after
    # half the units of each pruned layer; a layer fed by pruned units loses more (quadratic)
    assert 0.1 < report.sparsity < 0.8
    assert all("->" in v for v in report.layers.values())
    with torch.no_grad():
        out = result.model(ids, mask)
        # padding invariance survives: the short text alone gives the same output
        alone = result.model(ids[1:, :3], mask[1:, :3])
    assert out.shape == (2, 3)
    torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=1e-5)
    json.dumps(report.to_dict())


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_unstructured_pruning_is_global_and_permanent(kind: str) -> None:
    model = _models()[kind].eval()
    result = prune_model(model, 0.6, "unstructured")
    report = result.report
    assert report.sparsity == pytest.approx(0.6, abs=0.01)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not [n for n in names if n.endswith(("_orig", "_mask"))]  # no re-parametrization
    # every layer is pruned, none emptied: magnitudes are compared on each layer's scale
    assert all(0.3 < s < 0.9 for s in report.layers.values())
    # a step moves pruned weights; the masks put them back to zero
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    result.apply_masks()
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n, _ in result.masks)
    assert zeros >= report.zeros


def test_prune_settings_are_checked() -> None:
    model = _models()["lstm"]
    with pytest.raises(ConfigError, match="prune"):
        prune_model(model, 1.0)
    with pytest.raises(ConfigError, match="prune_kind"):
        prune_model(model, 0.5, "channels")


# -------------------------------------------------------------------- quantizing a bundle


def test_compress_a_bundle_without_torch_training(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    make_bundle(repo, "binary")
    data = labelled_csv(tmp_path / "test.csv")
    measured = compress(
        repo / "tiny-binary",
        quantize=["int8-dynamic", "fp16"],
        clip="p99.9",
        data=data,
        latency_runs=5,
        throughput_batches=1,
    )
    assert [m.name for m in measured] == ["fp32", "clip-p99.9+int8-dynamic", "clip-p99.9+fp16"]
    assert [m.version for m in measured] == [1, 2, 3]
    for m in measured[1:]:
        manifest = read_manifest(m.bundle)
        assert manifest.variant["name"] == m.name
        assert manifest.variant["clip"]["kind"] == "percentile"
        assert manifest.variant["measured"]["size_mb"] == pytest.approx(m.size_mb)
        # selected on the given file, not a test file: no test metrics claimed
        assert manifest.metrics is None and "(file, " in m.selected_on
        assert manifest.variant["measured"]["score"] == pytest.approx(m.score)
        assert manifest.inputs[0].dtype == "int64" and manifest.outputs[0].dtype == "float32"
        assert abs(m.drop) <= 100 / len(TEXTS)  # at most one text flips on this random model
    # the fp32 reference, not a variant, is found again for the next call
    again = compress(repo / "tiny-binary", quantize=["fp16"], data=data, latency_runs=2)
    assert again[0].version == 1 and again[1].version == 4
    with pytest.raises(DataError, match="training texts"):
        compress(repo / "tiny-binary", quantize=["int8-static"], data=data)


def test_compress_settings_are_checked(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    bundle = make_bundle(repo, "binary")
    with pytest.raises(ConfigError, match="unknown mode"):
        compress(bundle.path, quantize=["int4"])
    with pytest.raises(ConfigError, match="needs the training run"):
        compress(bundle.path, prune=0.5)
    with pytest.raises(ConfigError, match="finetune_epochs"):
        compress(bundle.path, finetune_epochs=1)
    with pytest.raises(ConfigError, match="prune_kind"):
        compress(bundle.path, prune=0.5, prune_kind="heads")
    assert set(QUANTIZERS) == {"int8-dynamic", "int8-static", "fp16"}


# ---------------------------------------------------------------- transformer fusion before int8
class _Encoder(torch.nn.Module):
    """A tiny random BERT, mean-pooled to one score, as the pretrained family exports it."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64)  # fmt: skip
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.head = torch.nn.Linear(32, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # the argument names are the graph's input names (the exporter's dynamic axes)
        mask = attention_mask
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        return self.head((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))


def _exported(model: torch.nn.Module, folder: Path) -> Path:
    from modelyard.compress.quantize import preprocess
    from modelyard.exporters.onnx import export_graph

    torch.manual_seed(0)
    ids = torch.randint(1, 60, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    raw = folder / "raw" / "model.onnx"
    raw.parent.mkdir(parents=True)
    export_graph(model, ids.numpy(), mask.numpy(), raw, opset=18)
    pre = folder / "pre.onnx"
    preprocess(raw, pre)
    return pre


@pytest.mark.integration
def test_int8_dynamic_fuses_a_transformer_encoder_first(tmp_path: Path) -> None:
    from modelyard.compress.quantize import fuse_transformer, quantize_dynamic_int8
    from modelyard.runtime.backends import ONNXBackend

    torch.manual_seed(0)
    pre = _exported(_Encoder().eval(), tmp_path)
    fused = fuse_transformer(pre, tmp_path / "fused.onnx")
    assert fused == {"SkipLayerNormalization": 4, "BiasGelu": 2}  # 2 per layer, 1
    details = quantize_dynamic_int8(pre, tmp_path / "int8.onnx")
    assert details["fusions"] == fused
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"SkipLayerNormalization", "BiasGelu"} <= ops

    # the fused fp32 graph computes what the plain one does; int8 stays close
    ids = np.array([[5, 9, 13, 2, 0, 0], [7, 7, 8, 30, 41, 3]], dtype=np.int64)
    outputs = {}
    for name in ("pre.onnx", "fused.onnx", "int8.onnx"):
        backend = ONNXBackend(tmp_path / name, input_names=["input_ids", "attention_mask"])
        outputs[name] = backend.run(ids, (ids != 0).astype(np.int64))
    np.testing.assert_allclose(outputs["fused.onnx"], outputs["pre.onnx"], atol=1e-5)
    np.testing.assert_allclose(outputs["int8.onnx"], outputs["pre.onnx"], atol=0.1)


@pytest.mark.integration
def test_a_recurrent_graph_has_nothing_to_fuse(tmp_path: Path) -> None:
    from modelyard.compress.quantize import fuse_transformer

    model = build_model(RNNConfig(kind="lstm", embedding_dim=8, hidden_size=8), task="binary",
                        vocab_size=60, num_outputs=1, max_length=8)  # fmt: skip
    pre = _exported(model.eval(), tmp_path)
    assert fuse_transformer(pre, tmp_path / "fused.onnx") == {}
    assert not (tmp_path / "fused.onnx").exists()
