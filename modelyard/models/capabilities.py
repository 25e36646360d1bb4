"""What a model family can do beyond ``forward(ids, mask)``, declared by the family.

Generic code asks :func:`modelyard.models.capabilities` (the registry) and never sniffs a model
for methods: a family that declares a capability implements the protocol that goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


@dataclass(frozen=True)
class Capabilities:
    """What a model built from one config can do.

    Attributes:
        head_only: its encoder is frozen whole and only its head trains, on features computed
            once; the model is a :class:`FeatureModel`.
        merges_adapters: it has adapters (LoRA) to fold into its weights before export; the
            model is an :class:`AdapterModel`.
    """

    head_only: bool = False
    merges_adapters: bool = False


class FeatureModel(Protocol):
    """A model split in two: ``forward(ids, mask) == classify(features(ids, mask))``."""

    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...
    def classify(self, features: Tensor) -> Tensor: ...


class AdapterModel(Protocol):
    """A model whose adapters fold into the weights they adapt (same outputs, plain graph)."""

    def merge_adapters(self) -> object: ...


@runtime_checkable
class PartlyTrained(Protocol):
    """A model whose checkpoints hold only what training changes (a causal LM's LoRA adapters,
    not its frozen 135 M base weights, which the config names and the loader reads again)."""

    def trained_state_dict(self) -> dict[str, Tensor]: ...
    def load_trained_state(self, tensors: dict[str, Tensor]) -> None: ...
