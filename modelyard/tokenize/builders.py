"""Build a tokenizer of each kind as one HF ``tokenizers.Tokenizer`` (saved as tokenizer.json).

Every kind carries its cleaning as normalizers, its truncation (``max_length``, side) and its
padding (pad to the longest text of a batch, side, pad id) inside the object, so the runtime that
loads ``tokenizer.json`` encodes exactly as training did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from modelyard.config import CleanConfig, TokenizerConfig
from modelyard.errors import ConfigError
from modelyard.tokenize.clean import char_class, clean_normalizers, sequence
from modelyard.tokenize.pretrained import PACKAGE_PREFIX, resolve_model_dir

TokenizerBuilder = Callable[[TokenizerConfig, CleanConfig, Sequence[str]], Tokenizer]

# Names a pretrained tokenizer without padding settings commonly uses for its pad token.
_PAD_TOKEN_NAMES: tuple[str, ...] = ("[PAD]", "<pad>", "<PAD>", "<|pad|>", "<|padding|>")


def build_tokenizer(cfg: TokenizerConfig, clean: CleanConfig, texts: Sequence[str]) -> Tokenizer:
    """Build (train, or load for ``pretrained``) the tokenizer ``cfg`` describes.

    Args:
        cfg: the tokenizer section of the config.
        clean: cleaning steps (unicode form, lowercase, HTML) baked in as normalizers.
        texts: training texts (ignored by ``pretrained``).

    Returns:
        A ``tokenizers.Tokenizer`` with truncation and padding enabled; save it with
        ``tok.save(path)``.

    Raises:
        ConfigError: a pretrained tokenizer is missing or has no pad token.
    """
    return TOKENIZER_BUILDERS[cfg.kind](cfg, clean, texts)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a saved ``tokenizer.json`` (a file, or a directory holding one).

    Args:
        path: the file or its directory.

    Returns:
        The tokenizer, with the truncation and padding it was saved with.

    Raises:
        ConfigError: no tokenizer.json there, or it cannot be parsed.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(f"no tokenizer.json at {path}")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise ConfigError(f"{file}: not a valid tokenizer.json: {exc}") from None


# ------------------------------------------------------------------------------------- word
def build_word(cfg: TokenizerConfig, clean: CleanConfig, texts: Sequence[str]) -> Tokenizer:
    """A word-level tokenizer with the ids Keras' ``Tokenizer(num_words, oov_token)`` gives.

    Keras lowercases, replaces each ``filters`` character with a space, splits on " ", ranks words
    by count (ties in order of first appearance), gives the OOV token index 1 and words 2, 3, ...;
    ``texts_to_sequences`` maps any word ranked at or past ``num_words`` to the OOV index. Here the
    vocabulary simply stops at ``num_words`` ids so the OOV (unk) token catches the rest; id 0 is
    the pad token, which Keras reserves without naming.
    """
    steps = clean_normalizers(clean)
    if cfg.lowercase and not clean.lowercase:
        steps.append(normalizers.Lowercase())
    if cfg.filters:
        steps.append(normalizers.Replace(char_class(cfg.filters), " "))
    normalizer = sequence(steps)

    # Counting with the tokenizer's own normalizer keeps training and runtime splits identical;
    # a dict remembers first appearance, and Python's sort is stable, as in Keras.
    counts: dict[str, int] = {}
    for text in texts:
        normalized = normalizer.normalize_str(text) if normalizer is not None else text
        for word in normalized.split(" "):
            if word:
                counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)

    vocab = {cfg.pad_token: 0, cfg.oov_token: 1}
    for word, _ in ranked:
        if len(vocab) >= cfg.num_words:
            break
        # a text word equal to a special token's spelling cannot take a second id
        vocab.setdefault(word, len(vocab))

    tok = Tokenizer(models.WordLevel(vocab, unk_token=cfg.oov_token))
    tok.normalizer = normalizer
    # Keras splits on the single space character only (tabs and newlines are in the filters)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    return _with_length_settings(tok, cfg, pad_id=0, pad_token=cfg.pad_token)


# --------------------------------------------------------------------------------- subwords
def build_bpe(cfg: TokenizerConfig, clean: CleanConfig, texts: Sequence[str]) -> Tokenizer:
    """A BPE tokenizer trained on ``texts`` (pad id 0, unk = ``oov_token`` id 1)."""
    tok = Tokenizer(models.BPE(unk_token=cfg.oov_token))
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[cfg.pad_token, cfg.oov_token],
        show_progress=False,
    )
    return _train_subwords(tok, trainer, pre_tokenizers.Whitespace(), cfg, clean, texts)


def build_wordpiece(cfg: TokenizerConfig, clean: CleanConfig, texts: Sequence[str]) -> Tokenizer:
    """A WordPiece tokenizer trained on ``texts`` (pad id 0, unk = ``oov_token`` id 1)."""
    tok = Tokenizer(models.WordPiece(unk_token=cfg.oov_token, continuing_subword_prefix="##"))
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[cfg.pad_token, cfg.oov_token],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return _train_subwords(tok, trainer, pre_tokenizers.BertPreTokenizer(), cfg, clean, texts)


def _train_subwords(
    tok: Tokenizer,
    trainer: trainers.Trainer,
    pre_tokenizer: pre_tokenizers.PreTokenizer,
    cfg: TokenizerConfig,
    clean: CleanConfig,
    texts: Sequence[str],
) -> Tokenizer:
    steps = clean_normalizers(clean)
    if cfg.lowercase and not clean.lowercase:
        steps.append(normalizers.Lowercase())
    tok.normalizer = sequence(steps)
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # the trainer puts special tokens first, in the order given; check rather than trust it
    if tok.token_to_id(cfg.pad_token) != 0 or tok.token_to_id(cfg.oov_token) != 1:
        raise ConfigError(
            f"tokenizer: expected {cfg.pad_token!r} at id 0 and {cfg.oov_token!r} at id 1 "
            "after training"
        )
    return _with_length_settings(tok, cfg, pad_id=0, pad_token=cfg.pad_token)


# ------------------------------------------------------------------------------- characters
# the char tokenizer's fixed ids: a model that reads characters finds its words between spaces
CHAR_PAD_ID, CHAR_OOV_ID, CHAR_SPACE_ID = 0, 1, 2
# split off as words of their own ("good!" is "good" and "!"), as word tokenizers do
CHAR_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…–—"


def char_normalizer(cfg: TokenizerConfig, clean: CleanConfig) -> normalizers.Normalizer:
    """Cleaning, then one space around each punctuation mark, runs of whitespace as one space,
    and one space at each end: every word, the first and last included, sits between spaces."""
    steps = clean_normalizers(clean)
    if cfg.lowercase and not clean.lowercase:
        steps.append(normalizers.Lowercase())
    steps += [normalizers.Replace(mark, f" {mark} ") for mark in CHAR_PUNCTUATION]
    steps += [
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
        normalizers.Prepend(" "),
        normalizers.Replace(Regex("$"), " "),
    ]
    return normalizers.Sequence(steps)


def build_char(cfg: TokenizerConfig, clean: CleanConfig, texts: Sequence[str]) -> Tokenizer:
    """One id per character: pad 0, unk 1, space 2, then the training texts' characters by count
    (those seen ``min_frequency`` times, at most ``vocab_size`` ids in all); ``max_length``
    counts characters. The word and character n-grams of ``linear_ngrams`` are computed from
    these ids inside the model, so this stays the bundle's only tokenizer."""
    normalizer = char_normalizer(cfg, clean)
    counts: dict[str, int] = {}
    for text in texts:
        for char in normalizer.normalize_str(text):
            counts[char] = counts.get(char, 0) + 1
    vocab = {cfg.pad_token: CHAR_PAD_ID, cfg.oov_token: CHAR_OOV_ID, " ": CHAR_SPACE_ID}
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
    for char, count in ranked:
        if len(vocab) >= cfg.vocab_size or count < cfg.min_frequency:
            break
        vocab.setdefault(char, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=cfg.oov_token))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return _with_length_settings(tok, cfg, pad_id=CHAR_PAD_ID, pad_token=cfg.pad_token)


# ------------------------------------------------------------------------------- pretrained
def build_pretrained(cfg: TokenizerConfig, clean: CleanConfig, texts: Sequence[str]) -> Tokenizer:
    """Load ``cfg.path``/tokenizer.json, keep its pad id, and add cleaning, truncation, padding.

    The tokenizer's own normalizer (and so its casing) and post-processor (e.g. BERT's [CLS] and
    [SEP]) are kept; ``cfg.lowercase`` does not apply. Padding is reset to the batch's longest
    text (a Hugging Face tokenizer.json often pads to a fixed length) and truncation to
    ``cfg.max_length``, special tokens included. ``cfg.path`` may be ``package:NAME``.
    """
    if not cfg.path:
        raise ConfigError(
            "tokenizer.path: required for kind 'pretrained' (a local directory with tokenizer.json)"
        )
    file = Path(cfg.path)
    if cfg.path.startswith(PACKAGE_PREFIX):
        file = resolve_model_dir(cfg.path, key="tokenizer.path")
    if file.is_dir() or not file.suffix:
        file = file / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(f"tokenizer.path: no tokenizer.json found at {cfg.path}")
    tok = load_tokenizer(file)

    if tok.padding is not None:
        pad_id, pad_token = int(tok.padding["pad_id"]), str(tok.padding["pad_token"])
    else:
        for name in (cfg.pad_token, *_PAD_TOKEN_NAMES):
            found = tok.token_to_id(name)
            if found is not None:
                pad_id, pad_token = found, name
                break
        else:
            raise ConfigError(
                f"tokenizer.path: {file} has no padding settings and no pad token "
                f"(looked for {', '.join((cfg.pad_token, *_PAD_TOKEN_NAMES))})"
            )

    steps = clean_normalizers(clean)
    if steps:
        # cleaning runs first, then whatever normalization the pretrained model expects
        own = tok.normalizer
        tok.normalizer = sequence([*steps, own] if own is not None else steps)
    return _with_length_settings(tok, cfg, pad_id=pad_id, pad_token=pad_token)


def _with_length_settings(
    tok: Tokenizer, cfg: TokenizerConfig, *, pad_id: int, pad_token: str
) -> Tokenizer:
    tok.enable_truncation(cfg.max_length, direction=cfg.truncation_side)
    tok.enable_padding(direction=cfg.padding_side, pad_id=pad_id, pad_token=pad_token)
    return tok


TOKENIZER_BUILDERS: dict[str, TokenizerBuilder] = {
    "word": build_word,
    "bpe": build_bpe,
    "wordpiece": build_wordpiece,
    "char": build_char,
    "pretrained": build_pretrained,
}
