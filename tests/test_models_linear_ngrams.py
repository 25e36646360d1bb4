"""The linear_ngrams family and the char tokenizer it reads: the features against a plain-Python
reading of the documented hashes, padding and batch invariance, int32 safety, the config rules."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers.padding import padding_variants, place, sample_texts

from modelyard.config import CleanConfig, LinearNgramsConfig, TokenizerConfig, load_config
from modelyard.errors import ConfigError
from modelyard.models import LinearNgramsClassifier, build_model
from modelyard.models.linear_ngrams import BIGRAM_SEED, WORD_SEED, term_weights
from modelyard.models.masking import to_right_padding
from modelyard.tokenize import build_tokenizer
from modelyard.tokenize.builders import CHAR_SPACE_ID

pytestmark = pytest.mark.unit

VOCAB = 50
BUCKETS = 1 << 12


def tiny(
    char_ngrams: tuple[int, int] = (2, 5),
    word_ngrams: int = 2,
    window: int = 24,
    task: str = "multiclass",
    num_outputs: int = 3,
    vocab: int = VOCAB,
    buckets: int = BUCKETS,
) -> LinearNgramsClassifier:
    torch.manual_seed(0)
    cfg = LinearNgramsConfig(
        kind="linear_ngrams",
        char_ngrams=list(char_ngrams),
        word_ngrams=word_ngrams,
        word_window=window,
        buckets=buckets,
    )
    model = build_model(cfg, task=task, vocab_size=vocab, num_outputs=num_outputs, max_length=9)
    assert isinstance(model, LinearNgramsClassifier)
    return model.eval()


def expected(model: LinearNgramsClassifier, seq: list[int]) -> Counter[int]:
    """Every feature id of one unpadded text, as the module docstring defines them."""
    p, b, v = model.multiplier, model.buckets, model.vocab_size
    low, high = model.char_ngrams
    out: Counter[int] = Counter()

    def fold(h: int, ids: list[int]) -> int:
        for c in ids:
            h = (h * p + c) % b
        return h

    for n in range(low, high + 1):
        for i in range(len(seq) - n + 1):
            gram = seq[i : i + n]
            out[gram[0] if n == 1 else v + fold(gram[0], gram[1:])] += 1
    if model.word_ngrams == 0:
        return out
    for i, c in enumerate(seq):
        if c == CHAR_SPACE_ID or (i > 0 and seq[i - 1] != CHAR_SPACE_ID):
            continue
        ahead = seq[i : i + model.word_window]
        word = ahead[: ahead.index(CHAR_SPACE_ID)] if CHAR_SPACE_ID in ahead else ahead
        out[v + fold(WORD_SEED, word)] += 1
        if model.word_ngrams < 2 or len(word) == len(ahead):
            continue
        rest = ahead[len(word) + 1 :]
        second = rest[: rest.index(CHAR_SPACE_ID)] if CHAR_SPACE_ID in rest else rest
        if second:
            out[v + fold(BIGRAM_SEED, [*word, CHAR_SPACE_ID, *second])] += 1
    return out


def features(model: LinearNgramsClassifier, seq: list[int]) -> Counter[int]:
    ids = torch.tensor([seq])
    feats, valid = model.features(to_right_padding(ids, torch.ones_like(ids)))
    return Counter(feats[valid].tolist())


# " ab cd efg " with a = 3, b = 4, ...
TEXT = [2, 3, 4, 2, 5, 6, 2, 7, 8, 9, 2]


@pytest.mark.parametrize(
    ("chars", "words", "window"),
    [((2, 5), 2, 24), ((1, 3), 1, 24), ((3, 3), 0, 24), ((2, 4), 2, 3)],
)
def test_features_are_the_documented_hashes(
    chars: tuple[int, int], words: int, window: int
) -> None:
    model = tiny(chars, words, window)
    assert features(model, TEXT) == expected(model, TEXT)


def test_counts_of_each_kind() -> None:
    model = tiny((2, 2), 2)
    got = features(model, TEXT)
    # 10 character bigrams, 3 words, 2 word bigrams; all distinct here
    assert sum(got.values()) == 10 + 3 + 2
    words_only = tiny((8, 8), 1)
    assert sum(features(words_only, TEXT).values()) == 3 + 4  # 3 words, 4 char 8-grams


def test_a_word_and_the_same_characters_are_different_features() -> None:
    text = [2, 3, 4, 5, 2]  # " abc ": the word "abc" and the character 3-gram "abc"
    grams = features(tiny((2, 4), 0), text)
    with_word = features(tiny((2, 4), 1), text)
    word = with_word - grams
    assert sum(word.values()) == 1 and not set(word) & set(grams)


def test_words_longer_than_the_window_are_cut_and_lose_their_bigram() -> None:
    model = tiny((2, 2), 2, window=3)
    long_word = [2, 3, 4, 5, 6, 2, 7, 2]  # " abcd e "
    assert features(model, long_word) == expected(model, long_word)
    # "abcd" is read as "abc", and its bigram would need 6 characters: only "e" has none either
    assert sum(features(model, long_word).values()) == 7 + 2


@pytest.mark.parametrize("words", [0, 2])
def test_padding_and_batch_invariance(words: int) -> None:
    model = tiny(word_ngrams=words)
    text, long_a, long_b = sample_texts(VOCAB)
    text[::3] = CHAR_SPACE_ID  # some words
    long_a[::4] = CHAR_SPACE_ID
    alone, padded = padding_variants(model, text, long_a, long_b)
    for got in padded:
        torch.testing.assert_close(got, alone, atol=1e-6, rtol=0)


def test_hash_never_overflows_int32() -> None:
    model = tiny(vocab=5000, buckets=2**22)
    seq = [2, 4999, 4998, 4997, 2, 4000, 3, 4999, 2]
    ids = torch.tensor([seq])
    in64, _ = model.features(to_right_padding(ids, torch.ones_like(ids)))
    in32, _ = model.features(
        to_right_padding(ids.to(torch.int32), torch.ones_like(ids, dtype=torch.int32))
    )
    assert torch.equal(in64, in32.to(torch.long))
    assert Counter(in64[in64 > 0].tolist()) == expected(model, seq)


@pytest.mark.parametrize(
    ("task", "width"), [("binary", 1), ("multiclass", 4), ("multilabel", 4), ("regression", 1)]
)
def test_every_task_trains_a_step(task: str, width: int) -> None:
    model = tiny(task=task, num_outputs=4).train()
    ids, mask = place([(torch.tensor(TEXT), 0), (torch.tensor([2, 5, 2]), 4)], 11)
    out = model(ids, mask)
    assert out.shape == (2, width)
    out.pow(2).mean().backward()
    grad = model.weight.weight.grad
    assert grad is not None and grad[0].abs().sum() == 0  # the pad row is never trained


def test_empty_text_stays_finite() -> None:
    model = tiny()
    ids, mask = place([(torch.tensor(TEXT), 0), (torch.tensor([], dtype=torch.long), 0)], 11)
    assert torch.isfinite(model(ids, mask)).all()


def test_char_tokenizer_ids_words_and_punctuation() -> None:
    cfg = TokenizerConfig(kind="char", vocab_size=50, max_length=64)
    tok = build_tokenizer(cfg, CleanConfig(), ["aab", "Great, film!!"])
    enc = tok.encode("Great,\n\tFILM  ok?")
    assert "".join(enc.tokens).replace("<OOV>", "#") == " great , film ## # "
    assert enc.ids[0] == enc.ids[-1] == CHAR_SPACE_ID and tok.token_to_id(" ") == CHAR_SPACE_ID
    assert tok.token_to_id("<PAD>") == 0 and tok.token_to_id("<OOV>") == 1
    assert enc.tokens.count("<OOV>") == 3  # "o", "k" and "?" were never seen
    assert tok.token_to_id("a") == 3  # the most frequent character first


def test_char_tokenizer_caps_the_vocabulary() -> None:
    cfg = TokenizerConfig(kind="char", vocab_size=50, min_frequency=2)
    tok = build_tokenizer(cfg, CleanConfig(), ["abcabd"])
    assert set(tok.get_vocab()) == {"<PAD>", "<OOV>", " ", "a", "b"}


def test_config_picks_the_char_tokenizer_and_refuses_others() -> None:
    base = {"name": "t", "task": "binary", "data": {"train": "x.csv"}}
    config = load_config({**base, "model": {"kind": "linear_ngrams"}})
    assert (config.tokenizer.kind, config.tokenizer.max_length) == ("char", 1024)
    config = load_config(
        {**base, "model": {"kind": "linear_ngrams"}, "tokenizer": {"max_length": 9}}
    )
    assert (config.tokenizer.kind, config.tokenizer.max_length) == ("char", 9)
    with pytest.raises(ConfigError, match=r"reads characters.*'char', not 'bpe'"):
        load_config({**base, "model": {"kind": "linear_ngrams"}, "tokenizer": {"kind": "bpe"}})
    with pytest.raises(ConfigError, match=r"model\.char_ngrams"):
        load_config({**base, "model": {"kind": "linear_ngrams", "char_ngrams": [4, 2]}})


def test_term_weights_count_each_distinct_feature_once() -> None:
    ids = torch.tensor([[7, 3, 7, 0, 7, 3, 9], [4, 4, 0, 0, 0, 0, 0]])
    valid = torch.tensor([[1, 1, 1, 0, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    ordered, weights = term_weights(ids, valid)
    got = [
        {int(i): round(float(w), 6) for i, w in zip(row, ws, strict=True) if w > 0}
        for row, ws in zip(ordered, weights, strict=True)
    ]
    ln = torch.log(torch.tensor([2.0, 3.0])).tolist()
    assert got == [
        {3: round(1 + ln[0], 6), 7: round(1 + ln[1], 6), 9: 1.0},
        {4: round(1 + ln[0], 6)},
    ]
    assert int((weights > 0).sum()) == 4  # padding and repeats weigh nothing


def test_logits_are_the_normalised_weighted_sum() -> None:
    model = tiny((2, 2), 1)
    text = [2, 3, 3, 3, 2, 3, 3, 3, 2]  # " aaa aaa ": "aa" 4 times, " a" and "a " twice, word twice
    counts = expected(model, text)
    weight = {i: 1 + torch.log(torch.tensor(float(c))) for i, c in counts.items()}
    norm = torch.stack(list(weight.values())).pow(2).sum().sqrt()
    manual = sum(model.weight.weight[i] * w for i, w in weight.items()) / norm + model.bias
    ids = torch.tensor([text])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, torch.ones_like(ids))[0], manual.detach())


def test_tflite_is_refused_with_the_reason() -> None:
    base = {"name": "t", "task": "binary", "data": {"train": "x.csv"}}
    model = {"kind": "linear_ngrams"}
    with pytest.raises(ConfigError, match=r"export\.formats.*does not convert to TFLite.*sort"):
        load_config({**base, "model": model, "export": {"formats": ["onnx", "tflite"]}})
    targets = {"phone": {"format": "tflite", "max_size_mb": 5}}
    with pytest.raises(ConfigError, match=r"targets\.phone\.format.*use onnx"):
        load_config({**base, "model": model, "targets": targets})
