"""How a model's weights start: a registry of named schemes, applied once after a model is built.

``keras`` reproduces what Keras layers do by default, the recipe the seed example comes from:

- embeddings U(-0.05, 0.05) (the padding row stays zero: ``padding_idx`` also keeps its gradient
  at zero, and the models' masking never needs anything else from it);
- Glorot-uniform kernels for linear and convolution layers and for a recurrent layer's input
  weights (over all gates at once, as Keras' fused kernel), zero biases;
- orthogonal recurrent (hidden-to-hidden) kernels;
- the LSTM forget-gate bias at 1 (Keras' ``unit_forget_bias``): torch keeps two bias vectors per
  layer and adds them, so ``bias_ih``'s forget slice is 1 and ``bias_hh`` stays zero;
- a transformer's fused query/key/value projection initialised as three separate kernels, as
  Keras' ``MultiHeadAttention`` has them.

``torch`` leaves PyTorch's per-layer defaults (embeddings N(0, 1), linear/conv/RNN weights
U(±1/sqrt(fan_in))): what every model did before ``model.init`` existed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from modelyard.errors import ConfigError
from modelyard.models.transformer import SelfAttention

KERAS_EMBEDDING_LIMIT = 0.05


@torch.no_grad()
def keras_init(model: nn.Module) -> None:
    """Re-initialise every embedding, linear, convolution and LSTM/GRU layer of ``model``."""
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.uniform_(module.weight, -KERAS_EMBEDDING_LIMIT, KERAS_EMBEDDING_LIMIT)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear | nn.Conv1d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LSTM | nn.GRU):
            _keras_rnn(module)
    for module in model.modules():
        if isinstance(module, SelfAttention):
            # qkv is one (3C, C) matrix; Keras' query, key and value kernels are (C, C) each
            for part in module.qkv.weight.chunk(3, dim=0):
                nn.init.xavier_uniform_(part)


def _keras_rnn(rnn: nn.LSTM | nn.GRU) -> None:
    hidden = rnn.hidden_size
    for name, param in rnn.named_parameters():
        if name.startswith("weight_ih") or name.startswith("weight_hr"):
            nn.init.xavier_uniform_(param)
        elif name.startswith("weight_hh"):
            nn.init.orthogonal_(param)
        elif name.startswith("bias"):
            nn.init.zeros_(param)
            if isinstance(rnn, nn.LSTM) and name.startswith("bias_ih"):
                param[hidden : 2 * hidden] = 1.0  # gates are (input, forget, cell, output)


def torch_init(model: nn.Module) -> None:
    """Keep PyTorch's defaults (the layers set them when they were built)."""


INITIALIZERS: dict[str, Callable[[nn.Module], None]] = {"keras": keras_init, "torch": torch_init}


def initialize(model: nn.Module, scheme: str) -> None:
    """Apply the initialisation ``scheme`` names to ``model`` in place.

    Args:
        model: a freshly built model.
        scheme: a key of :data:`INITIALIZERS` (``model.init``).

    Raises:
        ConfigError: an unknown scheme.
    """
    init = INITIALIZERS.get(scheme)
    if init is None:
        raise ConfigError(
            f"model.init: unknown scheme {scheme!r}; valid schemes: {', '.join(INITIALIZERS)}"
        )
    init(model)
