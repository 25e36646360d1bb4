"""OpenAI's chat and text completion shapes: request bodies in, answers, stream chunks and errors
out. Pure functions; the routes are in :mod:`modelyard.serving.openai_api`.

A request's ``model`` is a served model's name (the version it serves), or ``NAME:VERSION`` /
``NAME:ALIAS`` for another loaded version (Ollama's ``name:tag``). Every client error is
OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``.

Accepted fields: ``model``, ``messages`` (chat: text content, or a list of text parts) or
``prompt`` (completions: a string, or a list of one), ``max_tokens`` (chat also
``max_completion_tokens``), ``temperature``, ``top_p``, ``seed``, ``stop``, ``n`` (1 only),
``stream``, ``stream_options.include_usage``, ``logprobs`` / ``top_logprobs`` (completions:
``logprobs`` is the count), ``response_format`` (``text``, ``json_object``, ``json_schema``). Tools,
``n`` over 1 and token-id prompts are refused with a 400; other OpenAI fields (``user``,
``metadata`` ...) are ignored.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from modelyard.runtime.generation_params import GenerationParams, ParamError, check_messages
from modelyard.runtime.generator import GenerationChunk
from modelyard.runtime.llama_cpp import GeneratedToken, Messages

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
OPENAI_PATHS = frozenset({CHAT_PATH, COMPLETIONS_PATH})
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "audio", "prediction")


def error_payload(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape for an HTTP status."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = {
        401: "invalid_api_key",
        404: "model_not_found",
        413: "request_too_large",
        503: "overloaded",
        504: "timeout",
    }.get(status)
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    return orjson.dumps(error_payload(status, message, param))


@dataclass(frozen=True)
class CompletionRequest:
    """One parsed chat or text completion request."""

    model: str
    request: str | Messages  # a prompt, or the chat's messages
    params: GenerationParams
    stream: bool
    include_usage: bool

    @property
    def chat(self) -> bool:
        return not isinstance(self.request, str)


def parse_request(body: bytes, *, chat: bool) -> CompletionRequest:
    """A request body as :class:`CompletionRequest`.

    Raises:
        ParamError: malformed JSON, a missing or bad field (named in ``param``).
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParamError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ParamError("the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ParamError("model must be a model's name (GET /v1/models lists them)", "model")
    for name in _UNSUPPORTED:
        if data.get(name) is not None:
            raise ParamError(f"{name} is not supported by this server", name)
    if data.get("n", 1) != 1:
        raise ParamError("n must be 1 (one answer per request)", "n")
    stream = _flag(data, "stream")
    options = data.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise ParamError(
            "stream_options must be an object, and only with stream: true", "stream_options"
        )
    include_usage = bool(
        options and _flag(options, "include_usage", "stream_options.include_usage")
    )
    request: str | Messages = (
        _messages(data.get("messages")) if chat else _prompt(data.get("prompt"))
    )
    return CompletionRequest(model, request, _params(data, chat=chat), stream, include_usage)


def _flag(data: Mapping[str, Any], key: str, param: str | None = None) -> bool:
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ParamError(f"{param or key} must be true or false", param or key)
    return value


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ParamError("messages must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ParamError(f"messages[{i}] must be an object", f"messages[{i}]")
        content = message.get("content")
        if isinstance(content, list):  # text parts: [{"type": "text", "text": "..."}]
            texts = [
                p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"
            ]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise ParamError(
                    f"messages[{i}].content: only text parts are supported",
                    f"messages[{i}].content",
                )
            content = "".join(str(t) for t in texts)
        if not isinstance(content, str):
            raise ParamError(
                f"messages[{i}].content must be a string or text parts", f"messages[{i}].content"
            )
        out.append({"role": message.get("role"), "content": content})
    check_messages(out)
    return out


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ParamError("prompt must be a string (one prompt per request)", "prompt")
    return prompt


def _params(data: Mapping[str, Any], *, chat: bool) -> GenerationParams:
    max_tokens = data.get("max_completion_tokens") if chat else None
    max_tokens = max_tokens if max_tokens is not None else data.get("max_tokens")
    stop = data.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not isinstance(stop, list):
        raise ParamError("stop must be a string or a list of strings", "stop")
    logprobs, top = data.get("logprobs"), data.get("top_logprobs")
    if chat:
        wanted = _flag(data, "logprobs")
        if top is not None and not wanted:
            raise ParamError("top_logprobs needs logprobs: true", "top_logprobs")
        top = 0 if top is None else top
    else:  # completions: logprobs is the number of alternatives (0 to 5)
        if logprobs is not None and (
            isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 5
        ):
            raise ParamError("logprobs must be an integer 0 to 5", "logprobs")
        wanted, top = logprobs is not None, logprobs or 0
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=_number(data, "temperature", 1.0),
        top_p=_number(data, "top_p", 1.0),
        seed=data.get("seed"),
        stop=tuple(stop or ()),
        logprobs=wanted,
        top_logprobs=top,
        json_schema=_schema(data.get("response_format")),
    )


def _number(data: Mapping[str, Any], key: str, default: float) -> Any:
    value = data.get(key)
    return default if value is None else value  # the runtime checks the range


def _schema(response_format: Any) -> Mapping[str, Any] | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ParamError("response_format must be an object", "response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ParamError(
                "response_format.json_schema.schema must be a JSON schema object", "response_format"
            )
        return schema
    raise ParamError(
        "response_format.type must be text, json_object or json_schema", "response_format"
    )


# ----------------------------------------------------------------------------- answers
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _token(token: GeneratedToken) -> dict[str, Any]:
    return {
        "token": token.text_bytes.decode("utf-8", errors="replace"),
        "logprob": token.logprob,
        "bytes": list(token.text_bytes),
    }


def chat_logprobs(tokens: Sequence[GeneratedToken]) -> dict[str, Any]:
    """Chat's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    return {
        "content": [
            _token(t) | {"top_logprobs": [_token(a) for a in t.top_logprobs]} for t in tokens
        ]
    }


def text_logprobs(tokens: Sequence[GeneratedToken], offset: int = 0) -> dict[str, Any]:
    """Completions' ``logprobs``: tokens, token_logprobs, top_logprobs, text_offset."""
    texts = [t.text_bytes.decode("utf-8", errors="replace") for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [
            {a.text_bytes.decode("utf-8", errors="replace"): a.logprob for a in t.top_logprobs}
            for t in tokens
        ],
        "text_offset": offsets,
    }


@dataclass
class Shaper:
    """Shapes one request's answer or stream chunks as OpenAI does."""

    request: CompletionRequest
    fingerprint: str  # which bundle answered: NAME, version

    def __post_init__(self) -> None:
        self.id = new_id(self.request.chat)
        self.created = int(time.time())
        self.sent = 0  # text characters streamed so far (completions' text_offset)

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.request.model,
            "system_fingerprint": self.fingerprint,
        }

    def answer(
        self, text: str, tokens: Sequence[GeneratedToken], finish: str, prompt: int, completion: int
    ) -> dict[str, Any]:
        want = self.request.params.logprobs
        if self.request.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": chat_logprobs(tokens) if want else None,
                "finish_reason": finish,
            }
            kind = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": text_logprobs(tokens) if want else None,
                "finish_reason": finish,
            }
            kind = "text_completion"
        return self._head(kind) | {"choices": [choice], "usage": usage(prompt, completion)}

    def chunk(self, chunk: GenerationChunk, *, first: bool = False) -> dict[str, Any] | None:
        """One stream event for ``chunk`` (``None``: nothing to send)."""
        want = self.request.params.logprobs
        if chunk.finish_reason is None and not chunk.text and not chunk.tokens and not first:
            return None
        if self.request.chat:
            delta: dict[str, Any] = (
                {"content": chunk.text} if chunk.text or not first else {"content": ""}
            )
            if first:
                delta = {"role": "assistant"} | delta
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta if chunk.finish_reason is None or chunk.text else {},
                "logprobs": chat_logprobs(chunk.tokens) if want and chunk.tokens else None,
                "finish_reason": chunk.finish_reason,
            }
            kind = "chat.completion.chunk"
        else:
            choice = {
                "index": 0,
                "text": chunk.text,
                "logprobs": text_logprobs(chunk.tokens, self.sent)
                if want and chunk.tokens
                else None,
                "finish_reason": chunk.finish_reason,
            }
            self.sent += len(chunk.text)
            kind = "text_completion"
        out = self._head(kind) | {"choices": [choice]}
        if self.request.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, prompt: int, completion: int) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.request.chat else "text_completion"
        return self._head(kind) | {"choices": [], "usage": usage(prompt, completion)}


def sse(event: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
