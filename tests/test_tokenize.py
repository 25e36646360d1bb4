"""Tokenizers: Keras word ids, subword training, cleaning, lengths, padding, save/load."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from modelyard.config import KERAS_FILTERS, CleanConfig, TokenizerConfig
from modelyard.errors import ConfigError
from modelyard.tokenize import (
    build_tokenizer,
    encode,
    load_tokenizer,
    pad_batch,
    tokenizer_info,
)

pytestmark = pytest.mark.unit

TEXTS = [
    "The movie was GREAT, great acting!",
    "the plot...\twas thin;  the acting was not.",
    "Great\nscenes: the end was (mostly) great",
    "A dull, dull movie.",
    "Acting? Superb.  Plot? Thin!",
]


# --------------------------------------------------- a tiny copy of keras.preprocessing.text
def keras_words(text: str, filters: str = KERAS_FILTERS, lower: bool = True) -> list[str]:
    if lower:
        text = text.lower()
    text = text.translate({ord(c): " " for c in filters})
    return [w for w in text.split(" ") if w]


def keras_fit(texts: list[str], oov_token: str = "<OOV>") -> dict[str, int]:
    counts: OrderedDict[str, int] = OrderedDict()
    for text in texts:
        for w in keras_words(text):
            counts[w] = counts.get(w, 0) + 1
    wcounts = list(counts.items())
    wcounts.sort(key=lambda x: x[1], reverse=True)
    sorted_voc = [oov_token] + [w for w, _ in wcounts]
    return dict(zip(sorted_voc, range(1, len(sorted_voc) + 1), strict=True))


def keras_texts_to_sequences(
    texts: list[str], word_index: dict[str, int], num_words: int, oov_token: str = "<OOV>"
) -> list[list[int]]:
    oov = word_index[oov_token]
    out = []
    for text in texts:
        seq = []
        for w in keras_words(text):
            i = word_index.get(w)
            seq.append(oov if i is None or i >= num_words else i)
        out.append(seq)
    return out


def word_cfg(**kw: object) -> TokenizerConfig:
    return TokenizerConfig.model_validate({"kind": "word", "max_length": 64, **kw})


# ------------------------------------------------------------------------------- word ids
@pytest.mark.parametrize("num_words", [3, 6, 10000])
def test_word_ids_match_keras(num_words: int) -> None:
    tok = build_tokenizer(word_cfg(num_words=num_words), CleanConfig(), TEXTS)
    index = keras_fit(TEXTS)
    unseen = ["great UNSEEN words, the movie!", "thin plot"]
    for texts in (TEXTS, unseen):
        assert encode(tok, texts) == keras_texts_to_sequences(texts, index, num_words)
    vocab = tok.get_vocab()
    assert vocab["<PAD>"] == 0
    assert vocab["<OOV>"] == 1
    assert len(vocab) == min(num_words, len(index) + 1)
    for word, i in index.items():
        if 2 <= i < num_words:
            assert vocab[word] == i


def test_word_frequency_ties_keep_first_appearance() -> None:
    tok = build_tokenizer(word_cfg(), CleanConfig(), ["b a c", "c a b", "d"])
    # counts a=2, b=2, c=2, d=1: ties ranked in order of first appearance
    assert encode(tok, ["a b c d"]) == [[3, 2, 4, 5]]


def test_word_num_words_cap_maps_rare_words_to_oov() -> None:
    tok = build_tokenizer(word_cfg(num_words=4), CleanConfig(), ["x x x y y z", "w"])
    assert tok.get_vocab_size() == 4
    assert encode(tok, ["x y z w never"]) == [[2, 3, 1, 1, 1]]


def test_word_keeps_case_without_lowercase() -> None:
    tok = build_tokenizer(word_cfg(lowercase=False), CleanConfig(), ["Cat cat cat"])
    assert encode(tok, ["cat Cat CAT"]) == [[2, 3, 1]]


# ------------------------------------------------------------------------ lengths, padding
@pytest.mark.parametrize(("side", "expected"), [("right", [2, 3, 4]), ("left", [4, 5, 6])])
def test_truncation_side(side: str, expected: list[int]) -> None:
    texts = ["a b c d e", "a b c d", "a b c", "a b", "a"]
    tok = build_tokenizer(word_cfg(max_length=3, truncation_side=side), CleanConfig(), texts)
    assert encode(tok, ["a b c d e"]) == [expected]
    assert tokenizer_info(tok).truncation_side == side


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_side_lives_in_the_tokenizer(side: str) -> None:
    tok = build_tokenizer(word_cfg(padding_side=side), CleanConfig(), ["a b c", "a b", "a"])
    padded = [e.ids for e in tok.encode_batch(["a b c", "a"])]
    assert padded[1] == ([2, 0, 0] if side == "right" else [0, 0, 2])
    # encode strips that padding again, whichever side it was on
    assert encode(tok, ["a b c", "a"]) == [[2, 3, 4], [2]]
    assert tokenizer_info(tok).padding_side == side


def test_pad_batch_sides_and_fixed_length() -> None:
    right = pad_batch([[5, 6, 7], [8], []], pad_id=0)
    assert right.ids.dtype == np.int64
    assert right.mask.dtype == np.int64
    assert right.ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert right.mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    left = pad_batch([[5, 6, 7], [8]], pad_id=9, side="left", length=4)
    assert left.ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert left.mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert pad_batch([]).ids.shape == (0, 0)
    with pytest.raises(ValueError, match="length=2"):
        pad_batch([[1, 2, 3]], length=2)
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], side="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["word", "bpe", "wordpiece"])
def test_empty_text_becomes_unk(kind: str) -> None:
    tok = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=50), CleanConfig(), TEXTS)
    unk = tokenizer_info(tok).unk_id
    assert unk == 1
    out = encode(tok, ["", "   ", "great"])
    assert out[0] == [unk]
    assert out[1] == [unk]
    assert out[2] != [unk]
    if kind == "word":
        assert encode(tok, ["!!! ..."]) == [[unk]]  # only filtered characters


# --------------------------------------------------------------------------------- cleaning
def test_cleaning_is_in_the_normalizer_and_survives_save(tmp_path: Path) -> None:
    clean = CleanConfig(unicode="NFKC", lowercase=True, strip_html=True)
    texts = ["Great<br />movie &amp; more", "ｆｕｌｌ width &lt;b&gt; Cafe\u0301"]
    tok = build_tokenizer(word_cfg(filters=""), clean, texts)
    assert tok.normalizer is not None
    normalized = tok.normalizer.normalize_str("<p>Ｈｉ &quot;x&quot; &#39;y&#39; &amp;lt;</p>")
    assert normalized == " hi \"x\" 'y' &lt; "
    assert tok.normalizer.normalize_str("Cafe\u0301") == "café"

    tok.save(str(tmp_path / "tokenizer.json"))
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert "Replace" in json.dumps(saved["normalizer"])
    loaded = load_tokenizer(tmp_path)
    probe = [*texts, "GREAT <i>movie</i>", "Café"]
    assert encode(loaded, probe) == encode(tok, probe)
    assert encode(loaded, ["café"]) == encode(loaded, ["Cafe\u0301"])


@pytest.mark.parametrize("kind", ["word", "bpe", "wordpiece"])
def test_save_load_roundtrip(kind: str, tmp_path: Path) -> None:
    cfg = TokenizerConfig(
        kind=kind, vocab_size=60, max_length=5, padding_side="left", truncation_side="left"
    )
    tok = build_tokenizer(cfg, CleanConfig(strip_html=True), TEXTS)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = Tokenizer.from_file(str(path))
    probe = [*TEXTS, "", "zzz unseen <b>words</b> here"]
    assert encode(loaded, probe) == encode(tok, probe)
    assert tokenizer_info(loaded) == tokenizer_info(tok)
    info = tokenizer_info(loaded)
    assert (info.pad_id, info.max_length, info.padding_side, info.truncation_side) == (
        0,
        5,
        "left",
        "left",
    )


# --------------------------------------------------------------------------------- subwords
@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_subword_train_and_encode(kind: str) -> None:
    cfg = TokenizerConfig(kind=kind, vocab_size=80, min_frequency=1, max_length=100)
    tok = build_tokenizer(cfg, CleanConfig(), TEXTS * 3)
    info = tokenizer_info(tok)
    assert info.vocab_size <= 80
    assert tok.token_to_id("<PAD>") == 0
    assert tok.token_to_id("<OOV>") == 1
    ids = encode(tok, ["the great movie", "€€"])
    assert all(0 < i < info.vocab_size for i in ids[0])
    # lowercase is on by default, so casing does not change the ids
    assert encode(tok, ["THE GREAT MOVIE"])[0] == ids[0]
    assert ids[1][0] == 1  # an unseen character is unknown


# ------------------------------------------------------------------------------- pretrained
def _pretrained_dir(tmp_path: Path, *, with_padding: bool) -> Path:
    cfg = TokenizerConfig(kind="wordpiece", vocab_size=60, pad_token="[PAD]", oov_token="[UNK]")
    tok = build_tokenizer(cfg, CleanConfig(), TEXTS)
    tok.no_truncation()
    tok.no_padding()
    tok.add_special_tokens(["[CLS]"])
    if with_padding:
        cls_id = tok.token_to_id("[CLS]")
        tok.enable_padding(pad_id=cls_id, pad_token="[CLS]")
    out = tmp_path / "encoder"
    out.mkdir()
    tok.save(str(out / "tokenizer.json"))
    return out


def test_pretrained_keeps_pad_id_and_adds_settings(tmp_path: Path) -> None:
    path = _pretrained_dir(tmp_path, with_padding=True)
    cfg = TokenizerConfig(kind="pretrained", path=str(path), max_length=4, padding_side="left")
    tok = build_tokenizer(cfg, CleanConfig(strip_html=True), [])
    info = tokenizer_info(tok)
    assert info.pad_id == tok.token_to_id("[CLS]")
    assert (info.max_length, info.padding_side) == (4, "left")
    assert encode(tok, ["the<br/>movie"]) == encode(tok, ["the movie"])
    assert len(encode(tok, ["the movie was great great great"])[0]) == 4


def test_pretrained_finds_pad_token_by_name(tmp_path: Path) -> None:
    path = _pretrained_dir(tmp_path, with_padding=False)
    tok = build_tokenizer(TokenizerConfig(kind="pretrained", path=str(path)), CleanConfig(), [])
    assert tokenizer_info(tok).pad_id == 0


def test_pretrained_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="nowhere"):
        build_tokenizer(TokenizerConfig(kind="pretrained", path=str(missing)), CleanConfig(), [])
    with pytest.raises(ConfigError, match=r"tokenizer\.path"):
        build_tokenizer(TokenizerConfig(kind="pretrained"), CleanConfig(), [])


def test_tokenize_does_not_import_torch() -> None:
    code = "import sys, modelyard.tokenize; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
