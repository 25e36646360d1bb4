"""The bag_of_ngrams family: hashed n-gram ids, padding and batch invariance, tasks, pruning."""

from __future__ import annotations

import pytest
import torch
from helpers.padding import padding_variants, place, sample_texts

from modelyard.compress.prune import prune_model
from modelyard.config import BagOfNgramsConfig, load_config
from modelyard.errors import ConfigError
from modelyard.models import BagOfNgramsClassifier, build_model
from modelyard.models.bag_of_ngrams import INT32_MAX, ngram_multiplier
from modelyard.models.masking import to_right_padding

pytestmark = pytest.mark.unit

VOCAB = 99
BUCKETS = 64


def tiny(
    ngrams: int = 2,
    task: str = "multiclass",
    num_outputs: int = 3,
    vocab: int = VOCAB,
    buckets: int = BUCKETS,
    dropout: float = 0.0,
) -> BagOfNgramsClassifier:
    torch.manual_seed(0)
    cfg = BagOfNgramsConfig(
        kind="bag_of_ngrams", embedding_dim=16, ngrams=ngrams, buckets=buckets, dropout=dropout
    )
    model = build_model(cfg, task=task, vocab_size=vocab, num_outputs=num_outputs, max_length=40)
    assert isinstance(model, BagOfNgramsClassifier)
    return model.eval()


def ngram_ids(model: BagOfNgramsClassifier, seq: list[int]) -> list[int]:
    """The real n-gram ids (words excluded) of one unpadded text."""
    ids = torch.tensor([seq])
    feats, valid = model.features(to_right_padding(ids, torch.ones_like(ids)))
    return feats[0, len(seq) :][valid[0, len(seq) :]].tolist()


@pytest.mark.parametrize("ngrams", [1, 2, 3])
def test_padding_and_batch_invariance(ngrams: int) -> None:
    model = tiny(ngrams)
    text, long_a, long_b = sample_texts(VOCAB)
    alone, padded = padding_variants(model, text, long_a, long_b)
    with torch.no_grad():
        a_alone = model(long_a[None], torch.ones(1, 37, dtype=torch.long))[0]
        a_batched = model(*place([(text, 0), (long_a, 0)], 37))[1]
    for got in padded:
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(a_batched, a_alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("task", "num_outputs", "width"),
    [("binary", 1, 1), ("multiclass", 4, 4), ("multilabel", 5, 5), ("regression", 1, 1)],
)
def test_every_task_trains_a_step(task: str, num_outputs: int, width: int) -> None:
    model = tiny(3, task=task, num_outputs=num_outputs, dropout=0.3).train()
    ids, mask = place([(torch.arange(1, 9), 0), (torch.arange(3, 6), 5)], 8)
    out = model(ids, mask)
    assert out.shape == (2, width) and out.dtype == torch.float32
    out.pow(2).mean().backward()
    grad = model.embedding.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad[0].abs().sum() == 0  # the pad row is never trained
    assert grad[VOCAB:].abs().sum() > 0  # the n-gram buckets are


def test_ngram_ids_in_range_and_masked_at_padding() -> None:
    model = tiny(3)
    ids, mask = place([(torch.arange(1, 8), 0), (torch.tensor([5, 6]), 3)], 9)
    feats, valid = model.features(to_right_padding(ids, mask))
    assert feats.shape == valid.shape == (2, 3 * 9)
    words, grams = feats[:, :9], feats[:, 9:]
    # 7 words -> 6 bigrams + 5 trigrams; 2 words -> 1 bigram, no trigram
    assert valid[:, 9:].sum(dim=1).tolist() == [11, 1]
    assert valid[:, :9].sum(dim=1).tolist() == [7, 2]
    real = grams[valid[:, 9:]]
    assert ((real >= VOCAB) & (real < VOCAB + BUCKETS)).all()
    assert (grams[~valid[:, 9:]] == 0).all()  # padding id wherever a token is padding
    assert (words[~valid[:, :9]] == 0).all()


def test_bigram_hash_is_the_documented_formula() -> None:
    model = tiny(2, buckets=1000)
    p = model.multiplier
    assert p == VOCAB  # 99 is odd: kept
    assert ngram_ids(model, [3, 7, 11]) == [VOCAB + (3 * p + 7) % 1000, VOCAB + (7 * p + 11) % 1000]


def test_word_order_matters_only_with_ngrams() -> None:
    forward, backward = torch.tensor([[4, 9, 17, 30]]), torch.tensor([[30, 17, 9, 4]])
    mask = torch.ones_like(forward)
    with torch.no_grad():
        words = tiny(1)
        torch.testing.assert_close(words(forward, mask), words(backward, mask))
        bigrams = tiny(2)
        assert not torch.allclose(bigrams(forward, mask), bigrams(backward, mask))


def test_hash_never_overflows_int32() -> None:
    vocab, buckets = 40_000, 2**20
    p = ngram_multiplier(vocab, buckets)
    assert p % 2 == 1 and max(vocab, buckets) * p + vocab <= INT32_MAX
    assert ngram_multiplier(10_000, 2**16) == 10_001  # the unconstrained case: V made odd
    model = tiny(3, vocab=vocab, buckets=buckets)
    ids = torch.tensor([[vocab - 1, vocab - 2, vocab - 3, 39_000, 1]])
    batch = to_right_padding(ids, torch.ones_like(ids))
    in64, _ = model.features(batch)
    batch32 = to_right_padding(ids.to(torch.int32), torch.ones_like(ids, dtype=torch.int32))
    in32, _ = model.features(batch32)  # what a TFLite graph computes
    assert torch.equal(in64, in32.to(torch.long))
    assert ((in64[0, 5:] >= vocab) & (in64[0, 5:] < vocab + buckets)).sum() == 4 + 3


def test_empty_row_stays_finite() -> None:
    model = tiny(3)
    ids, mask = place([(torch.arange(1, 5), 0), (torch.tensor([], dtype=torch.long), 0)], 4)
    assert torch.isfinite(model(ids, mask)).all()


def test_words_only_has_no_bucket_rows() -> None:
    assert tiny(1).embedding.num_embeddings == VOCAB
    assert tiny(2).embedding.num_embeddings == VOCAB + BUCKETS


def test_config_validates_sizes() -> None:
    base = {"name": "t", "task": "binary", "data": {"train": "x.csv"}}
    config = load_config({**base, "model": {"kind": "bag_of_ngrams"}})
    assert isinstance(config.model, BagOfNgramsConfig) and config.model.ngrams == 2
    with pytest.raises(ConfigError, match=r"model\.ngrams"):
        load_config({**base, "model": {"kind": "bag_of_ngrams", "ngrams": 4}})
    with pytest.raises(ConfigError, match=r"model\.hidden_size.*buckets"):
        load_config({**base, "model": {"kind": "bag_of_ngrams", "hidden_size": 4}})


def test_unstructured_pruning_zeroes_the_table_and_head() -> None:
    model = tiny(2)
    report = prune_model(model, 0.5).report
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    assert set(report.layers) == {"embedding.weight", "head.weight"}
    assert (model.embedding.weight == 0).float().mean() > 0.4


def test_structured_pruning_says_what_to_use_instead() -> None:
    # nothing but the embedding table and the head: no units for structured pruning to remove
    with pytest.raises(ConfigError, match="prune_kind=unstructured"):
        prune_model(tiny(2), 0.5, "structured")


def test_the_example_config_builds_a_bag_of_ngrams() -> None:
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "bag_of_ngrams.yaml")
    assert isinstance(config.model, BagOfNgramsConfig)
    assert Path(config.data.train).exists()
    model = build_model(config.model, task=config.task, vocab_size=10_000, num_outputs=2,
                        max_length=config.tokenizer.max_length)  # fmt: skip
    assert isinstance(model, BagOfNgramsClassifier) and model.ngrams == 2
