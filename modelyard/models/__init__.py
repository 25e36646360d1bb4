"""Model families (torch), by name: bag_of_ngrams, linear_ngrams, lstm, gru, cnn, transformer,
pretrained, causal_lm.

Every model maps ``(input_ids, attention_mask)`` of shape (B, T) to raw logits (B, outputs), is
padding invariant (either side, any amount) and exports with ``torch.onnx.export(dynamo=True)``
using dynamic batch and sequence axes.
"""

from __future__ import annotations

from modelyard.models.bag_of_ngrams import BagOfNgramsClassifier, build_bag_of_ngrams
from modelyard.models.capabilities import AdapterModel, Capabilities, FeatureModel
from modelyard.models.cnn import CNNClassifier, build_cnn
from modelyard.models.heads import head_outputs, make_head
from modelyard.models.initialization import INITIALIZERS, initialize
from modelyard.models.linear_ngrams import LinearNgramsClassifier, build_linear_ngrams
from modelyard.models.pretrained import PretrainedClassifier, build_pretrained
from modelyard.models.registry import (
    FAMILY_CAPABILITIES,
    MODEL_BUILDERS,
    build_model,
    capabilities,
)
from modelyard.models.rnn import RNNClassifier, build_rnn
from modelyard.models.transformer import TransformerClassifier, build_transformer

__all__ = [
    "FAMILY_CAPABILITIES",
    "INITIALIZERS",
    "MODEL_BUILDERS",
    "AdapterModel",
    "BagOfNgramsClassifier",
    "CNNClassifier",
    "Capabilities",
    "FeatureModel",
    "LinearNgramsClassifier",
    "PretrainedClassifier",
    "RNNClassifier",
    "TransformerClassifier",
    "build_bag_of_ngrams",
    "build_cnn",
    "build_linear_ngrams",
    "build_model",
    "build_pretrained",
    "build_rnn",
    "build_transformer",
    "capabilities",
    "head_outputs",
    "initialize",
    "make_head",
]
