"""Model kinds by name: the config names a kind, :func:`build_model` looks its builder up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from modelyard.config import CausalLMConfig, ModelConfig, PretrainedModelConfig
from modelyard.errors import ConfigError
from modelyard.models.bag_of_ngrams import build_bag_of_ngrams
from modelyard.models.capabilities import Capabilities
from modelyard.models.causal_lm import build_causal_lm
from modelyard.models.cnn import build_cnn
from modelyard.models.initialization import initialize
from modelyard.models.linear_ngrams import build_linear_ngrams
from modelyard.models.pretrained import build_pretrained, pretrained_capabilities
from modelyard.models.rnn import build_rnn
from modelyard.models.transformer import build_transformer

# model kind (config.MODEL_KINDS, the same keys in the same order: tests/test_registries.py) ->
# builder(cfg, *, task, vocab_size, num_outputs, max_length, pad_id) -> nn.Module
MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lstm": build_rnn,
    "gru": build_rnn,
    "cnn": build_cnn,
    "transformer": build_transformer,
    "bag_of_ngrams": build_bag_of_ngrams,
    "linear_ngrams": build_linear_ngrams,
    "pretrained": build_pretrained,
    "causal_lm": build_causal_lm,
}

# what a family's models can do beyond forward, from their config; a kind not listed: nothing
FAMILY_CAPABILITIES: dict[str, Callable[[Any], Capabilities]] = {
    "pretrained": pretrained_capabilities,
}


def capabilities(cfg: ModelConfig) -> Capabilities:
    """What the model ``cfg`` builds can do beyond ``forward(ids, mask)``, as its family says."""
    declare = FAMILY_CAPABILITIES.get(cfg.kind)
    return declare(cfg) if declare is not None else Capabilities()


def build_model(
    cfg: ModelConfig,
    *,
    task: str,
    vocab_size: int,
    num_outputs: int,
    max_length: int,
    pad_id: int = 0,
) -> nn.Module:
    """Build the model ``cfg.kind`` names, its weights initialised as ``cfg.init`` says.

    Args:
        cfg: the model section of the config.
        task: binary, multiclass, multilabel or regression (sets the head size).
        vocab_size: number of token ids (the tokenizer's vocabulary, added tokens included).
        num_outputs: the label space's output count.
        max_length: longest input in tokens (the transformer's number of positions).
        pad_id: padding token id (its embedding is kept at zero).

    Returns:
        An ``nn.Module`` whose ``forward(input_ids, attention_mask)`` takes (B, T) long tensors
        and returns raw logits (B, outputs); padding may be on either side.

    Raises:
        ConfigError: unknown kind or task, or sizes that cannot work together.
    """
    builder = MODEL_BUILDERS.get(cfg.kind)
    if builder is None:
        raise ConfigError(
            f"model.kind: unknown kind {cfg.kind!r}; valid kinds: {', '.join(MODEL_BUILDERS)}"
        )
    if not 0 <= pad_id < vocab_size:
        raise ConfigError(f"pad id {pad_id} is outside the vocabulary (size {vocab_size})")
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    model = builder(
        cfg,
        task=task,
        vocab_size=vocab_size,
        num_outputs=num_outputs,
        max_length=max_length,
        pad_id=pad_id,
    )
    # pretrained weights are kept as loaded
    if not isinstance(cfg, (PretrainedModelConfig, CausalLMConfig)):
        initialize(model, cfg.init)
    return model
