"""model.init: Keras' initialisation (the default) per layer type; PyTorch's defaults on request."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from modelyard.config import (
    BagOfNgramsConfig,
    CNNConfig,
    RNNConfig,
    TransformerConfig,
    load_config,
)
from modelyard.errors import ConfigError
from modelyard.models import build_model, initialize
from modelyard.models.cnn import build_cnn
from modelyard.models.rnn import build_rnn
from modelyard.models.transformer import SelfAttention

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 99
SIZES: dict[str, Any] = {"task": "multiclass", "vocab_size": VOCAB, "num_outputs": 3}

CONFIGS = {
    "lstm": RNNConfig(kind="lstm", embedding_dim=32, hidden_size=32, num_layers=2),
    "bigru": RNNConfig(kind="gru", embedding_dim=32, hidden_size=32, bidirectional=True),
    "cnn": CNNConfig(kind="cnn", embedding_dim=32, num_filters=16, kernel_sizes=[2, 3]),
    "transformer": TransformerConfig(
        kind="transformer", embedding_dim=32, num_layers=1, num_heads=4, ff_size=64
    ),
    "bag_of_ngrams": BagOfNgramsConfig(kind="bag_of_ngrams", embedding_dim=32, buckets=50),
}


def build(cfg: Any, init: str | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = cfg if init is None else cfg.model_copy(update={"init": init})
    return build_model(cfg, max_length=16, **SIZES)


def glorot_limit(w: torch.Tensor) -> float:
    fan_out, fan_in = w.shape[0], w[0].numel()
    receptive = w[0, 0].numel() if w.dim() > 2 else 1
    return math.sqrt(6.0 / (fan_in + fan_out * receptive))


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_keras_is_the_default(kind: str) -> None:
    assert CONFIGS[kind].init == "keras"
    base = {"name": "t", "task": "binary", "data": {"train": "x.csv"}}
    assert load_config({**base, "model": {"kind": CONFIGS[kind].kind}}).model.init == "keras"


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_keras_embeddings_and_dense_layers(kind: str) -> None:
    model = build(CONFIGS[kind])
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert embeddings
    for emb in embeddings:
        w = emb.weight.detach()
        assert w.abs().max() <= 0.05
        assert w.abs().max() > 0.045  # uniform over the whole range, not a narrower one
        if emb.padding_idx is not None:
            assert (w[emb.padding_idx] == 0).all()
    fused = {id(m.qkv) for m in model.modules() if isinstance(m, SelfAttention)}  # tested below
    for layer in model.modules():
        if isinstance(layer, nn.Linear | nn.Conv1d) and id(layer) not in fused:
            limit = glorot_limit(layer.weight)
            assert layer.weight.abs().max() <= limit + 1e-7
            assert layer.bias is None or (layer.bias == 0).all()


def test_keras_lstm_kernels_and_forget_gate_bias() -> None:
    model = build(CONFIGS["lstm"])
    hidden = 32
    for rnn in model.modules():
        if not isinstance(rnn, nn.LSTM):
            continue
        w_ih, w_hh = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()
        assert w_ih.abs().max() <= glorot_limit(w_ih) + 1e-7  # Glorot over all four gates
        # orthogonal: (4H, H) with orthonormal columns
        torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(hidden), atol=1e-5, rtol=0)
        bias = rnn.bias_ih_l0.detach() + rnn.bias_hh_l0.detach()
        assert (bias[hidden : 2 * hidden] == 1).all()  # forget gate (gates i, f, g, o)
        assert (bias[:hidden] == 0).all() and (bias[2 * hidden :] == 0).all()


def test_keras_gru_has_zero_biases_and_orthogonal_recurrence() -> None:
    model = build(CONFIGS["bigru"])
    grus = [m for m in model.modules() if isinstance(m, nn.GRU)]
    assert len(grus) == 2
    for gru in grus:
        w_hh = gru.weight_hh_l0.detach()
        torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(32), atol=1e-5, rtol=0)
        assert (gru.bias_ih_l0 == 0).all() and (gru.bias_hh_l0 == 0).all()


def test_keras_attention_kernels_are_glorot_each() -> None:
    model = build(CONFIGS["transformer"])
    attention = next(m for m in model.modules() if isinstance(m, SelfAttention))
    dim = 32
    parts = attention.qkv.weight.detach().chunk(3, dim=0)
    for part in parts:
        assert part.abs().max() <= math.sqrt(6.0 / (2 * dim)) + 1e-7
    # wider than one Glorot draw over the fused (3C, C) matrix could be
    assert max(p.abs().max() for p in parts) > math.sqrt(6.0 / (4 * dim))


@pytest.mark.parametrize(
    ("kind", "builder"), [("lstm", build_rnn), ("cnn", build_cnn), ("bigru", build_rnn)]
)
def test_torch_init_keeps_pytorch_defaults(kind: str, builder: Any) -> None:
    model = build(CONFIGS[kind], init="torch")
    torch.manual_seed(0)
    plain = builder(CONFIGS[kind], max_length=16, **SIZES)  # today's weights, untouched
    for (name, got), (_, want) in zip(
        model.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        assert torch.equal(got, want), name
    # and it is not Keras': embeddings N(0, 1), no forget-gate bias
    emb = model.get_submodule("embedding")
    assert isinstance(emb, nn.Embedding)
    assert emb.weight.abs().max() > 1.0
    keras = build(CONFIGS[kind])
    assert not torch.equal(keras.state_dict()["embedding.weight"], emb.weight)


def test_init_follows_the_seed() -> None:
    a, b, c = build(CONFIGS["lstm"]), build(CONFIGS["lstm"]), build(CONFIGS["lstm"], seed=1)
    wa, wb, wc = (m.state_dict()["embedding.weight"] for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.init.*keras, torch"):
        initialize(nn.Linear(2, 2), "xavier")
    base = {"name": "t", "task": "binary", "data": {"train": "x.csv"}}
    with pytest.raises(ConfigError, match=r"model\.init"):
        load_config({**base, "model": {"kind": "cnn", "init": "xavier"}})


def test_seed_example_names_the_keras_init() -> None:
    # spelled out, so the seed keeps reproducing Keras whatever the default becomes
    raw = yaml.safe_load((ROOT / "examples" / "seed.yaml").read_text(encoding="utf-8"))
    assert raw["model"]["init"] == "keras"
    assert load_config(ROOT / "examples" / "seed.yaml").model.init == "keras"
