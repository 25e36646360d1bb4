"""Model families: padding invariance for every kind and pooling, head shapes, the registry."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers.padding import padding_variants, place, sample_texts

from modelyard.config import MODEL_KINDS, CNNConfig, RNNConfig, TransformerConfig
from modelyard.errors import ConfigError
from modelyard.models import MODEL_BUILDERS, build_model, head_outputs

pytestmark = pytest.mark.unit

VOCAB = 99
MAX_LENGTH = 40

AnyConfig = RNNConfig | CNNConfig | TransformerConfig

CONFIGS: list[AnyConfig] = [
    *(
        RNNConfig(
            kind=kind,
            embedding_dim=32,
            hidden_size=32,
            num_layers=2,
            bidirectional=bidirectional,
            dropout=0.2,
            pooling=pooling,
        )
        for kind, bidirectional, pooling in itertools.product(
            ("lstm", "gru"), (False, True), ("last", "mean", "max")
        )
    ),
    CNNConfig(kind="cnn", embedding_dim=32, num_filters=16, kernel_sizes=[1, 2, 3], dropout=0.2),
    CNNConfig(kind="cnn", embedding_dim=32, num_filters=16, kernel_sizes=[5]),
    *(
        TransformerConfig(
            kind="transformer",
            embedding_dim=32,
            num_layers=2,
            num_heads=4,
            ff_size=64,
            dropout=0.1,
            pooling=pooling,
        )
        for pooling in ("mean", "cls", "max")
    ),
]


BI_LSTM_LAST, BI_GRU_LAST, CNN, TRANSFORMER = CONFIGS[3], CONFIGS[9], CONFIGS[12], CONFIGS[14]
ONE_PER_FAMILY = [BI_LSTM_LAST, CNN, TRANSFORMER]


def config_id(cfg: AnyConfig) -> str:
    parts: list[str] = [cfg.kind]
    if isinstance(cfg, RNNConfig):
        parts += ["bi" if cfg.bidirectional else "uni", cfg.pooling]
    elif isinstance(cfg, TransformerConfig):
        parts.append(cfg.pooling)
    else:
        parts.append("k" + "-".join(map(str, cfg.kernel_sizes)))
    return "-".join(parts)


def tiny_model(cfg: AnyConfig, task: str = "multiclass", num_outputs: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        cfg, task=task, vocab_size=VOCAB, num_outputs=num_outputs, max_length=MAX_LENGTH
    )
    return model.eval()


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_padding_invariance(cfg: AnyConfig) -> None:
    model = tiny_model(cfg)
    alone, (right, left, middle) = padding_variants(model, *sample_texts(VOCAB))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(middle, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("task", "num_outputs", "width"),
    [("binary", 1, 1), ("multiclass", 4, 4), ("multilabel", 5, 5), ("regression", 1, 1)],
)
@pytest.mark.parametrize("cfg", ONE_PER_FAMILY, ids=config_id)
def test_output_shape_per_task(cfg: AnyConfig, task: str, num_outputs: int, width: int) -> None:
    model = tiny_model(cfg, task=task, num_outputs=num_outputs)
    ids = torch.randint(1, VOCAB, (3, 7))
    out = model(ids, torch.ones_like(ids))
    assert out.shape == (3, width)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("cfg", [*ONE_PER_FAMILY, BI_GRU_LAST], ids=config_id)
def test_trains_one_step_with_dropout(cfg: AnyConfig) -> None:
    model = tiny_model(cfg, task="binary", num_outputs=1).train()
    ids, mask = place([(torch.arange(1, 9), 0), (torch.arange(3, 6), 5)], 8)
    loss = model(ids, mask).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the pad embedding is never trained
    embedding = model.get_submodule("embedding")
    assert isinstance(embedding, torch.nn.Embedding)
    assert embedding.weight.grad is not None
    assert embedding.weight.grad[0].abs().sum() == 0


def test_empty_row_stays_finite() -> None:
    for cfg in ONE_PER_FAMILY:
        model = tiny_model(cfg)
        ids, mask = place([(torch.arange(1, 5), 0), (torch.tensor([], dtype=torch.long), 0)], 4)
        assert torch.isfinite(model(ids, mask)).all()


def test_registry_covers_every_kind() -> None:
    assert set(MODEL_BUILDERS) == set(MODEL_KINDS)


def test_build_model_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="pad id"):
        build_model(CONFIGS[0], task="binary", vocab_size=5, num_outputs=1, max_length=9, pad_id=5)
    with pytest.raises(ConfigError, match="unknown task"):
        build_model(CONFIGS[0], task="ranking", vocab_size=5, num_outputs=1, max_length=9)
    with pytest.raises(ConfigError, match="at least 2"):
        build_model(CONFIGS[0], task="multiclass", vocab_size=5, num_outputs=1, max_length=9)


def test_head_outputs() -> None:
    assert head_outputs("binary", 2) == 1
    assert head_outputs("regression", 1) == 1
    assert head_outputs("multiclass", 3) == 3
    assert head_outputs("multilabel", 1) == 1
