"""A Hugging Face byte-level BPE tokenizer as GGUF metadata, the way llama.cpp reads it back.

llama.cpp keeps its own tokenizer: the token strings and their types, the merges, the special
token ids, whether BOS/EOS are added, the chat template, and the name of a pre-tokenizer it
implements (``tokenizer.ggml.pre``). A tokenizer whose pre-tokenizer llama.cpp does not implement
the same way is refused, never written with a guess: a guessed pre-tokenizer splits text
differently and the model answers worse without any error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
from tokenizers import Tokenizer

from modelyard.errors import BundleError

# tokenizer.ggml.pre: llama.cpp's name for each Hugging Face pre-tokenizer it splits the same way
# (llama-vocab.cpp: "gpt-2" is GPT-2's regex alone; "smollm" splits every digit first)
GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
PRE_TOKENIZERS: dict[str, list[dict[str, Any]]] = {
    "gpt-2": [GPT2_BYTE_LEVEL],
    "smollm": [{"type": "Digits", "individual_digits": True}, GPT2_BYTE_LEVEL],
}
TOKENIZER_MODEL = "gpt2"  # llama.cpp's name for byte-level BPE


def pre_tokenizer_name(tokenizer_json: dict[str, Any], source: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer.

    Raises:
        BundleError: the tokenizer is not byte-level BPE, normalizes text, or splits it in a way
            no name in :data:`PRE_TOKENIZERS` reproduces.
    """
    model = tokenizer_json.get("model") or {}
    decoder = tokenizer_json.get("decoder") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or decoder.get("type") != ("ByteLevel")
    ):
        raise BundleError(
            f"{source}: GGUF export writes byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3 "
            f"style); this one is {model.get('type')} with a {decoder.get('type')} decoder"
        )
    if tokenizer_json.get("normalizer") is not None:
        kind = tokenizer_json["normalizer"].get("type")
        raise BundleError(f"{source}: a {kind} normalizer has no GGUF equivalent")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    for name, expected in PRE_TOKENIZERS.items():
        if len(steps) == len(expected) and all(
            all(step.get(key) == value for key, value in want.items())
            for step, want in zip(steps, expected, strict=True)
        ):
            return name
    raise BundleError(
        f"{source}: pre-tokenizer {json.dumps(pre)[:200]} is not one llama.cpp reproduces "
        f"({', '.join(PRE_TOKENIZERS)}); GGUF export refuses rather than guess"
    )


def token_table(tokenizer_json: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token text and GGUF token type, padded to the model's ``vocab_size`` rows.

    Special added tokens are control tokens (never produced by tokenizing plain text), other
    added tokens user-defined; ids the tokenizer leaves unused get ``[PAD<id>]``.
    """
    texts: dict[int, str] = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    types = dict.fromkeys(texts, int(gguf.TokenType.NORMAL))
    for added in tokenizer_json.get("added_tokens", []):
        texts[added["id"]] = added["content"]
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        types[added["id"]] = int(kind)
    if max(texts) >= vocab_size:
        raise BundleError(
            f"the tokenizer has id {max(texts)} but the model only {vocab_size} embedding rows"
        )
    unused = int(gguf.TokenType.UNUSED)
    tokens = [texts.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    return tokens, [types.get(i, unused) for i in range(vocab_size)]


def added_specials(tokenizer: Tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds a token before the text (BOS) and after it (EOS), as measured."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    return start > 0, len(full) > start + len(plain)


def add_vocabulary(writer: gguf.GGUFWriter, directory: Path, vocab_size: int) -> str:
    """Write the directory's tokenizer (``tokenizer.json``, its config and chat template) into
    ``writer``: tokens, types, merges, special ids, BOS/EOS flags and the chat template.

    Returns:
        llama.cpp's pre-tokenizer name that was written.

    Raises:
        BundleError: no ``tokenizer.json``, or a tokenizer GGUF cannot carry faithfully.
    """
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise BundleError(f"{directory} has no tokenizer.json (a fast tokenizer is needed)")
    tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
    pre = pre_tokenizer_name(tokenizer_json, path)
    tokens, types = token_table(tokenizer_json, vocab_size)
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # merges (both tokenizer.json layouts), special ids, chat template (tokenizer_config.json or
    # chat_template.jinja): the gguf package's own reader of a Hugging Face directory
    special = gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise BundleError(f"{path} has no BPE merges")
    adds_bos, adds_eos = added_specials(Tokenizer.from_file(str(path)))
    special.add_special_token = {"bos": adds_bos, "eos": adds_eos}
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)
    return pre
