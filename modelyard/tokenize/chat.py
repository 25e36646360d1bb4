"""Generative records -> token ids and labels, through the tokenizer's own chat template.

Torch-free and transformers-free: the tokenizer is any object with Hugging Face's
``apply_chat_template`` and a fast tokenizer's ``__call__`` (offsets); the model station hands
in the one it loaded.

The full templated text of a record is tokenized once, so token boundaries are the ones the
model sees at inference. Where each assistant turn lies comes from the template itself: the text
of the turns before it with the generation prompt (where the answer starts) and the text through
it (where its turn ends) are prefixes of the full text. A token is learnt when it starts inside
an assistant span: the turn as the template renders it, its end-of-turn token and what the
template writes after it (ChatML's newline after ``<|im_end|>``) included, which is the completion
TRL's ``completion_only_loss`` learns, so the two report the same ``val_loss`` over the same
tokens. A token straddling the start of an answer belongs to the prompt.

Length rule (:func:`encode_conversations`): the prompt (every token before the first learnt one)
must fit in ``max_length`` with room for one answer token, else :class:`DataError` naming
file:line; a longer record is cut at the right and counted in ``truncated``, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.data.chat import Conversation
from modelyard.errors import DataError

IGNORE_INDEX = -100  # label of a token without loss (torch's cross_entropy default)


@dataclass
class ChatEncoding:
    """Token ids and labels of a list of records, in record order.

    Attributes:
        input_ids: per record, the ids of its templated text (at most ``max_length``).
        labels: per record, the id where a token is learnt and :data:`IGNORE_INDEX` elsewhere
            (not shifted: the model's loss shifts them).
        truncated: ``file:line`` of every record cut to ``max_length``.
    """

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)

    @property
    def num_truncated(self) -> int:
        """How many records were cut at the right to fit."""
        return len(self.truncated)

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_conversations(
    tokenizer: Any,
    records: Sequence[Conversation],
    *,
    max_length: int,
    train_on: Literal["completion", "all"] = "completion",
) -> ChatEncoding:
    """Encode training records with the tokenizer's chat template.

    Args:
        tokenizer: a Hugging Face fast tokenizer with a ``chat_template``.
        records: what :func:`modelyard.data.read_conversations` returns.
        max_length: the most tokens a record keeps.
        train_on: ``completion``: only the assistant turns (through their end-of-turn text) are
            learnt; ``all``: every token. Plain-text records always learn every token (their
            text, then the end-of-sequence token).

    Returns:
        A :class:`ChatEncoding`.

    Raises:
        DataError: a record's prompt does not fit ``max_length``, or the chat template does
            not render each turn as a prefix of the whole conversation; names file:line.
        ValueError: ``max_length`` < 2 or an unknown ``train_on``.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if train_on not in ("completion", "all"):
        raise ValueError(f"train_on must be 'completion' or 'all', got {train_on!r}")
    out = ChatEncoding()
    for record in records:
        if record.text is not None:
            ids = _plain_ids(tokenizer, record.text)
            labels = list(ids)
            prompt = 0
        else:
            ids, learnt = _chat_ids(tokenizer, record)
            prompt = learnt.index(True) if True in learnt else len(ids)
            everything = train_on == "all"
            labels = [
                i if (everything or on) else IGNORE_INDEX for i, on in zip(ids, learnt, strict=True)
            ]
        if len(ids) > max_length:
            if prompt >= max_length:
                raise DataError(
                    f"{record.where}: prompt is {prompt} tokens, longer than max_length "
                    f"{max_length} (the answer needs at least one token); raise "
                    "tokenizer.max_length or shorten the record"
                )
            ids, labels = ids[:max_length], labels[:max_length]
            out.truncated.append(record.where)
        out.input_ids.append(ids)
        out.labels.append(labels)
    return out


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    ids = [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(int(eos))  # the model learns where a document ends
    return ids


def _chat_ids(tokenizer: Any, record: Conversation) -> tuple[list[int], list[bool]]:
    """The ids of the templated record and, per token, whether it is in an assistant span."""
    if not tokenizer.chat_template:
        raise DataError(
            f"{record.where}: the tokenizer has no chat template; chat and prompt/completion "
            "records need one (plain-text records do not)"
        )
    messages = record.messages
    full = _render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for index, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not (full.startswith(before) and full.startswith(through)):
            raise DataError(
                f"{record.where}: the chat template does not render turn {index + 1} as a "
                "prefix of the whole conversation, so the answer tokens cannot be found"
            )
        start, end = len(before), len(through)
        spans.append((start, end))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(i) for i in encoded["input_ids"]]
    starts = [int(a) for a, _ in encoded["offset_mapping"]]
    learnt = [False] * len(ids)
    for start, end in spans:
        for t, s in enumerate(starts):
            if start <= s < end:
                learnt[t] = True
    return ids, learnt


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)
