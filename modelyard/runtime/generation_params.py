"""What a generation request may ask, checked when built: :class:`GenerationParams` (OpenAI's
sampling, stop, log-probability and JSON-schema parameters) and :func:`check_messages` (a chat);
what is wrong is a :class:`ParamError` naming the parameter."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.errors import DataError

ROLES = ("system", "developer", "user", "assistant", "tool")


class ParamError(DataError):
    """A generation parameter (or the request itself) that cannot be answered; ``param`` names
    it as OpenAI's error shape does (``None``: the request as a whole)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthError(ParamError):
    """The prompt and ``max_tokens`` do not fit in the context."""


@dataclass(frozen=True)
class GenerationParams:
    """How to answer, in OpenAI's terms; each value is checked when built (:class:`ParamError`).

    Attributes:
        max_tokens: the most tokens to generate (``None``: until the context is full).
        temperature: 0 is greedy; higher samples more freely (0 to 2).
        top_p: nucleus sampling (0 to 1].
        seed: the sampler's seed: the same seed, prompt and parameters give the same text.
        stop: strings that end the answer (not included in it), also when one spans tokens.
        logprobs: report each generated token's log-probability.
        top_logprobs: and this many most likely alternatives per step (0 to 20).
        json_schema: constrain the answer to JSON (``{}``: any JSON object) matching this
            schema, through the engine's grammar; ``None``: free text.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    json_schema: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and not _positive_int(self.max_tokens):
            raise ParamError(
                f"max_tokens must be a positive integer: {self.max_tokens!r}", "max_tokens"
            )
        _check_number(self.temperature, "temperature", 0.0, 2.0)
        _check_number(self.top_p, "top_p", 0.0, 1.0)
        if self.top_p == 0:
            raise ParamError("top_p must be over 0", "top_p")
        if self.seed is not None and (not _int(self.seed) or not 0 <= self.seed < 2**32 - 1):
            raise ParamError(f"seed must be an integer in [0, 2**32 - 1): {self.seed!r}", "seed")
        if len(self.stop) > 4 or not all(isinstance(s, str) and s for s in self.stop):
            raise ParamError("stop must be at most 4 non-empty strings", "stop")
        if not _int(self.top_logprobs) or not 0 <= self.top_logprobs <= 20:
            raise ParamError(
                f"top_logprobs must be an integer 0 to 20: {self.top_logprobs!r}", "top_logprobs"
            )
        if self.json_schema is not None and not isinstance(self.json_schema, Mapping):
            raise ParamError("the JSON schema must be an object", "response_format")

    def engine_body(self) -> dict[str, Any]:
        """The parameters as llama.cpp's OpenAI endpoints read them.

        A request with a ``seed`` asks for the same text every time: llama.cpp's prompt cache is
        off for it (a prefix cached by another request was computed in another batch, and the
        issue behind this saw a greedy answer change after one), so its whole prompt is
        processed afresh. Without a seed the cache is on: a follow-up turn reuses the prefix
        the last turn left in its slot.
        """
        body: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "cache_prompt": self.seed is None,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stop:
            body["stop"] = list(self.stop)
        if self.json_schema is not None:
            body["json_schema"] = dict(self.json_schema) or {"type": "object"}
        return body


def check_messages(messages: Any) -> None:
    """A chat as OpenAI sends one: a non-empty list of ``{"role", "content"}`` objects whose
    content is a string (or a list of text parts, joined before this check).

    Raises:
        ParamError: naming the first bad message.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes) or not messages:
        raise ParamError("messages must be a non-empty list of messages", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise ParamError(f"{where} must be an object with role and content", where)
        role = message.get("role")
        if role not in ROLES:
            raise ParamError(
                f"{where}.role must be one of {', '.join(ROLES)}: {role!r}", f"{where}.role"
            )
        if not isinstance(message.get("content"), str):
            raise ParamError(f"{where}.content must be a string", f"{where}.content")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _int(value) and value >= 1


def _check_number(value: Any, name: str, low: float, high: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ParamError(f"{name} must be a number from {low:g} to {high:g}: {value!r}", name)
