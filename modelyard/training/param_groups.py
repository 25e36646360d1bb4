"""Optimizer parameter groups: no weight decay on norms and biases, layer-wise lr decay.

The recipe BERT-style fine-tuning uses (and AdamW's authors recommend): weight decay regularises
weight matrices, not biases or normalisation gains, which are vectors. Layer-wise learning-rate
decay trains the layers near the head fastest and the embeddings slowest, so the general
features of a pretrained encoder's lower layers move least. One function builds the groups; the
loop hands them to the optimizer builder, and the schedule scales every group's lr alike.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn

from modelyard.config import OptimizerConfig
from modelyard.errors import ConfigError


@runtime_checkable
class LayeredModel(Protocol):
    """A model that says which layer each parameter is in (``models/pretrained.py``)."""

    num_layers: int  # encoder layers; the embeddings are layer 0, the head num_layers + 1

    def layer_of(self, name: str) -> int: ...


def parameter_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in optimizer groups.

    Args:
        model: the model; frozen parameters (``requires_grad=False``) are left out.
        cfg: the ``train.optimizer`` section (``lr``, ``weight_decay``, ``layer_decay``).

    Returns:
        Groups with ``params``, ``lr``, ``weight_decay`` and, for reading, ``layer``. Vectors and
        scalars (biases, norm weights) get no weight decay. With ``layer_decay`` < 1 the
        parameters of layer ``i`` get ``lr * layer_decay ** (num_layers + 1 - i)``. The top
        layer comes first, so the first group holds the configured lr (what the logs show).

    Raises:
        ConfigError: ``layer_decay`` < 1 on a model without layers, or nothing to train.
    """
    by_layer = isinstance(model, LayeredModel) and cfg.layer_decay < 1.0
    if cfg.layer_decay < 1.0 and not by_layer:
        raise ConfigError(
            f"train.optimizer.layer_decay ({cfg.layer_decay}) needs a model with layers "
            "(model.kind 'pretrained'); leave it at 1.0 for this model"
        )
    top = model.num_layers + 1 if isinstance(model, LayeredModel) else 0
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = model.layer_of(name) if by_layer and isinstance(model, LayeredModel) else top
        decay = cfg.weight_decay > 0 and param.ndim >= 2
        groups.setdefault((layer, decay), []).append(param)
    if not groups:
        raise ConfigError("nothing to train: every parameter of the model is frozen")
    ordered = sorted(groups.items(), key=lambda item: (-item[0][0], not item[0][1]))
    return [
        {
            "params": params,
            "lr": cfg.lr * cfg.layer_decay ** (top - layer),
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "layer": layer,
        }
        for (layer, decay), params in ordered
    ]
