"""``model.head_only``: the pretrained encoder frozen whole, only the head trains.

The encoder runs once over the train and validation texts (in eval mode, so without dropout);
then the one loop trains on a feature dataset: the batch function yields the features instead
of token ids and a batch goes through the model's head alone. Batches are drawn from the texts'
token lengths, exactly as when the texts go through the whole model.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import cast

from modelyard.models import FeatureModel
from modelyard.training.collate import Data, EncodedSplit, FeatureBatches, FeatureSplit
from modelyard.training.predict import forward_logits
from modelyard.training.state import Trainer

log = logging.getLogger("modelyard.training")


def on_features(
    data: Data[EncodedSplit], trainer: Trainer, batch_size: int
) -> tuple[Data[FeatureSplit], Trainer]:
    """The train and validation splits as the frozen encoder's pooled features, computed once,
    and the optimisation parts that train the head on them.

    Args:
        data: the token splits and their batch function.
        trainer: the parts of a model whose family declares ``head_only`` (a ``FeatureModel``).
        batch_size: texts per forward pass of the encoder.
    """
    model = cast(FeatureModel, trainer.model)
    log.info("head_only: encoding %d texts once", len(data.train) + len(data.validation))

    def encoded(split: EncodedSplit) -> FeatureSplit:
        features = forward_logits(
            trainer.model, split, data.batch, batch_size=batch_size, call=model.features
        )
        return FeatureSplit(features, split.lengths, split.targets, split.source)

    features = Data(
        train=encoded(data.train),
        validation=encoded(data.validation),
        batch=FeatureBatches(data.batch.device),
        test=data.test,
    )
    # the features are fp32, computed once; the head trains on them in fp32
    return features, replace(trainer, forward=model.classify, autocast=None)
