"""The exporter's guards, without a real export: graph shape checks and the parity measurement."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from helpers.bundles import masked_mean_graph

from modelyard.errors import BundleError
from modelyard.exporters.onnx import check_graph, check_onnx_parity

pytestmark = pytest.mark.unit

VOCAB, OUTPUTS = 20, 3


class MaskedMean(torch.nn.Module):
    """The torch twin of the hand-built ONNX graph (same weights)."""

    def __init__(self, graph: onnx.ModelProto, shift: float = 0.0) -> None:
        super().__init__()
        weights = {
            t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
            for t in graph.graph.initializer
        }
        self.emb, self.weight, self.bias = (
            weights["emb"],
            weights["weight"],
            weights["bias"] + shift,
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()[:, :, None]  # (B, T, 1)
        pooled = (self.emb[ids] * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)
        return pooled @ self.weight + self.bias  # (B, K)


@pytest.fixture
def graph(tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    path = tmp_path / "model.onnx"
    path.write_bytes(masked_mean_graph(VOCAB, OUTPUTS))
    return path, onnx.load(str(path))


SEQS = [[1], [2, 3], [4, 5, 6, 7, 8, 9], [10] * 12]


@pytest.mark.parametrize("side", ["left", "right"])
def test_parity_is_measured_batched_and_alone(graph, side: str) -> None:
    path, proto = graph
    report = check_onnx_parity(MaskedMean(proto), path, SEQS, pad_id=0, side=side, atol=1e-4)
    assert report.ok and report.max_abs_diff < 1e-5
    assert (report.num_texts, report.batch_sizes) == (4, [4, 1])


def test_parity_catches_a_different_graph(graph) -> None:
    path, proto = graph
    report = check_onnx_parity(
        MaskedMean(proto, shift=0.01), path, SEQS, pad_id=0, side="right", atol=1e-4
    )
    assert not report.ok
    assert report.max_abs_diff == pytest.approx(0.01, rel=1e-3)


def test_self_contained_graph_passes(graph) -> None:
    check_graph(graph[0])


def test_fixed_sequence_axis_is_refused(graph) -> None:
    path, proto = graph
    for value_info in proto.graph.input:
        dim = value_info.type.tensor_type.shape.dim[1]
        dim.ClearField("dim_param")
        dim.dim_value = 30
    onnx.save(proto, str(path))
    with pytest.raises(BundleError, match="fixed the sequence axis of input_ids to 30"):
        check_graph(path)


def test_external_data_is_refused(graph) -> None:
    path, proto = graph
    onnx.save(proto, str(path), save_as_external_data=True, size_threshold=0, location="w.bin")
    with pytest.raises(BundleError, match="external data"):
        check_graph(path)


def test_parity_on_an_unrunnable_graph_is_a_bundle_error(graph) -> None:
    path, proto = graph
    for value_info in proto.graph.input:
        dim = value_info.type.tensor_type.shape.dim[1]
        dim.ClearField("dim_param")
        dim.dim_value = 2
    onnx.save(proto, str(path))
    with pytest.raises(BundleError, match="cannot run the exported graph"):
        check_onnx_parity(MaskedMean(proto), path, SEQS, pad_id=0, side="right", atol=1e-4)
