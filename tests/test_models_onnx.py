"""Every model family exports with torch.onnx (dynamo) and runs in ONNX Runtime at any B and T."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelyard.config import CNNConfig, RNNConfig, TransformerConfig
from modelyard.models import build_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # torch.export and nn.LSTM warn about their own internals from modules outside torch.*
    pytest.mark.filterwarnings("ignore:_check_is_size will be removed:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights:UserWarning"),
    # raised while dynamo traces the RNN's while_loop decomposition (torch 2.13)
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf"),
]

VOCAB = 99

CONFIGS: dict[str, RNNConfig | CNNConfig | TransformerConfig] = {
    "lstm": RNNConfig(
        kind="lstm", embedding_dim=32, hidden_size=32, num_layers=2, bidirectional=True
    ),
    "gru": RNNConfig(kind="gru", embedding_dim=32, hidden_size=32, pooling="max"),
    "cnn": CNNConfig(kind="cnn", embedding_dim=32, num_filters=16, kernel_sizes=[2, 3]),
    "transformer": TransformerConfig(
        kind="transformer", embedding_dim=32, num_layers=2, num_heads=4, ff_size=64
    ),
}


@pytest.fixture(autouse=True)
def quiet_torch_trace() -> Iterator[None]:
    """Detach every handler from torch's structured trace log while exporting.

    torch.export builds a (large) payload for ``torch.__trace`` whenever that logger has a
    handler, and pytest's log capture attaches its own; formatting and keeping those records
    roughly doubles the export time.
    """
    trace_log = logging.getLogger("torch.__trace")
    handlers = trace_log.handlers[:]
    trace_log.handlers.clear()
    try:
        yield
    finally:
        trace_log.handlers[:] = handlers


def batch(size: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids with one row left padded and one right padded."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (size, steps), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, : steps // 2] = 0
    mask[-1, steps - 2 :] = 0
    return ids * mask, mask


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_onnx_export_matches_torch(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(
        CONFIGS[kind], task="multiclass", vocab_size=VOCAB, num_outputs=3, max_length=32
    ).eval()
    path = tmp_path / "model.onnx"
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    torch.onnx.export(
        model,
        batch(2, 8, seed=0),
        str(path),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes=(dims, dims),
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size, steps in ((3, 5), (4, 19)):
        ids, mask = batch(size, steps, seed=steps)
        (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            want = model(ids, mask).numpy()
        assert got.shape == (size, 3)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
