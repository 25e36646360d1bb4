"""A bag of words and hashed word n-grams, averaged, then the task head (fastText).

After Joulin et al. 2016, "Bag of Tricks for Efficient Text Classification": each text is the
mean of the embeddings of its words and of its word n-grams (bigrams, optionally trigrams), and
one linear layer on that mean gives the logits. On small data this is hard to beat among cheap
neural models: it has no sequence machinery to overfit, and the bigrams carry the local order
("not good") that a plain bag of words loses.

Why the n-gram ids are computed inside the graph. fastText hashes the n-gram *strings* in its
own tokenizer. Here the n-gram ids are a function of the word ids, computed in ``forward`` with
integer ops (multiply, add, remainder, where), so:

- the bundle's ``tokenizer.json`` stays the only tokenizer: the runtime, the server and every
  tokenizer kind (word, BPE, WordPiece, pretrained) work unchanged, with nothing extra to ship
  or keep in sync;
- the ops export to ONNX (dynamic batch and sequence axes) and to TFLite like every other family;
- padding invariance comes for free from the same right-padding canonicalisation the other
  families use (:func:`modelyard.models.masking.to_right_padding`).

The hash. For an n-gram of ids ``w_1 .. w_n`` (each ``< V``, the vocabulary size) the bucket is
computed stepwise, ``h = w_1``, then ``h = (h * P + w_k) % B`` for each next id, with ``B``
buckets. ``P`` is ``V`` made odd (``V`` or ``V + 1``): ``w_1 * P + w_2`` is then distinct for
every bigram before the remainder, and an odd ``P`` shares no factor with a power-of-two ``B``.
Taking the remainder after every step keeps ``h < max(V, B)``, so no intermediate value exceeds
``max(V, B) * P + V``; when that would pass 2**31 - 1 (the TFLite converter turns int64 ids into
int32) ``P`` is lowered to fit, so the arithmetic never overflows in either runtime. A word
tokenizer numbers words by frequency, so the frequent bigrams (small ids) get buckets of their
own whenever ``w_1 * P + w_2 < B``; collisions are left to the rare ones, as in any hashing trick.

One embedding table holds both: rows ``[0, V)`` are the words (the padding row stays zero), rows
``[V, V + B)`` the n-gram buckets, shared by all orders as in fastText. An n-gram is a feature
only where all its tokens are real; elsewhere its id is the padding id and its weight in the
mean is zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modelyard.config import BagOfNgramsConfig
from modelyard.errors import ConfigError
from modelyard.models.heads import make_head
from modelyard.models.masking import RightPadded, masked_mean, to_right_padding

INT32_MAX = 2**31 - 1  # TFLite computes the ids in int32


def ngram_multiplier(vocab_size: int, buckets: int) -> int:
    """The hash multiplier ``P``: odd, ``>= vocab_size`` where the int32 bound allows it.

    Args:
        vocab_size: number of word ids ``V``.
        buckets: number of n-gram buckets ``B``.

    Returns:
        ``P`` with ``max(V, B) * P + V <= 2**31 - 1``.

    Raises:
        ConfigError: no ``P >= 1`` fits (``V`` or ``B`` near 2**31).
    """
    bound = (INT32_MAX - vocab_size) // max(vocab_size, buckets)
    p = min(vocab_size | 1, bound)
    if p % 2 == 0:
        p -= 1
    if p < 1:
        raise ConfigError(
            f"model.buckets: {buckets} buckets with a vocabulary of {vocab_size} cannot be hashed "
            "in int32; use fewer buckets"
        )
    return p


class BagOfNgramsClassifier(nn.Module):
    """Embedding bag of words + hashed n-grams -> masked mean -> dropout -> head.

    Args:
        vocab_size: number of word ids.
        embedding_dim: embedding width.
        ngrams: longest n-gram (1: words only).
        buckets: hashed n-gram rows (ignored when ``ngrams`` is 1).
        dropout: dropout on the averaged vector.
        head: the task head on the averaged vector.
        pad_id: padding token id.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        embedding_dim: int,
        ngrams: int,
        buckets: int,
        dropout: float,
        head: nn.Linear,
        pad_id: int,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.ngrams = ngrams
        self.buckets = buckets if ngrams > 1 else 0
        self.multiplier = ngram_multiplier(vocab_size, max(self.buckets, 1))
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size + self.buckets, embedding_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.head = head

    def features(self, batch: RightPadded) -> tuple[Tensor, Tensor]:
        """The ids of every word and n-gram of a right-padded batch, and which of them are real.

        Returns:
            ``ids`` (B, ngrams * T): words first, then each order's n-grams by start position,
            n-gram ids in ``[V, V + B)`` or the padding id; ``valid`` (B, ngrams * T) bool.
        """
        words, steps = batch.ids, batch.ids.shape[1]
        ids, valid = [words], [batch.valid]
        if self.ngrams > 1:
            # n - 1 pads on the right: every order has T start positions, no slice runs short
            tail = words.new_full((words.shape[0], self.ngrams - 1), self.pad_id)
            padded = torch.cat([words, tail], dim=1)  # (B, T + n - 1)
            positions = torch.arange(steps, device=words.device)[None, :]  # (1, T)
            h = words
            for n in range(2, self.ngrams + 1):
                h = (h * self.multiplier + padded[:, n - 1 : n - 1 + steps]) % self.buckets
                real = positions + (n - 1) < batch.lengths[:, None]  # (B, T): all n tokens real
                ids.append(torch.where(real, h + self.vocab_size, self.pad_id))  # (B, T)
                valid.append(real)
        return torch.cat(ids, dim=1), torch.cat(valid, dim=1)  # (B, ngrams * T) each

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits (B, num_outputs) for ids and mask of shape (B, T), padded on either side."""
        ids, valid = self.features(to_right_padding(input_ids, attention_mask))
        pooled = masked_mean(self.embedding(ids), valid)  # (B, E)
        return self.head(self.dropout(pooled))


def build_bag_of_ngrams(
    cfg: BagOfNgramsConfig,
    *,
    task: str,
    vocab_size: int,
    num_outputs: int,
    max_length: int,
    pad_id: int = 0,
) -> BagOfNgramsClassifier:
    """A :class:`BagOfNgramsClassifier` sized by ``cfg`` (``max_length`` is not needed).

    Args:
        cfg: the model section (kind ``bag_of_ngrams``).
        task: binary, multiclass, multilabel or regression.
        vocab_size: number of token ids.
        num_outputs: the label space's output count.
        max_length: longest input (unused).
        pad_id: padding token id.

    Returns:
        The model, in training mode.
    """
    return BagOfNgramsClassifier(
        vocab_size=vocab_size,
        embedding_dim=cfg.embedding_dim,
        ngrams=cfg.ngrams,
        buckets=cfg.buckets,
        dropout=cfg.dropout,
        head=make_head(task, cfg.embedding_dim, num_outputs),
        pad_id=pad_id,
    )
