"""A generative bundle answering prompts and chats, whole or streamed, without torch.

:func:`load_generator` turns a verified generative bundle into a :class:`Generator` on the engine
its manifest names (``ENGINES``: llama.cpp through ``xllamacpp``). The engine owns decoding,
the KV cache and continuous batching; this module owns the request's parameters
(:class:`GenerationParams`), the context check, and the shape of what comes back.

>>> generator = modelyard.load("models/assistant")
>>> generator.generate("Once upon a time", GenerationParams(max_tokens=16, seed=1)).text
>>> for chunk in generator.stream([{"role": "user", "content": "Hi"}]): print(chunk.text)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.bundle import Bundle
from modelyard.errors import BundleError, DataError
from modelyard.runtime.generation_params import (
    ContextLengthError,
    GenerationParams,
    ParamError,
    check_messages,
)
from modelyard.runtime.llama_cpp import (
    GeneratedToken,
    Generation,
    LlamaCppGenerator,
    Messages,
    parse_tokens,
)

ENGINES: dict[str, type[LlamaCppGenerator]] = {"llama.cpp": LlamaCppGenerator}


@dataclass(frozen=True)
class GenerationChunk:
    """One piece of a streamed answer: text that never splits a character, the tokens it
    came from (with log-probabilities when asked), and on the last chunks why it ended and what
    it used.

    Attributes:
        text: the new text (may be empty: a token that ends mid-character waits for the next).
        tokens: the generated tokens in this piece (:class:`GeneratedToken`).
        finish_reason: ``stop`` or ``length`` on the last piece, else ``None``.
        prompt_tokens, completion_tokens: set on the last piece only.
    """

    text: str = ""
    tokens: tuple[GeneratedToken, ...] = ()
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class GeneratorSettings:
    """How a generative bundle is started: decoding slots (requests decoded together),
    threads, and the context per slot (``None``: the manifest's ``context_length``)."""

    slots: int = 1
    threads: int | None = None
    context_length: int | None = None
    prompt_cache_mib: int = 0  # host memory for prompts a slot moved on from (shared prefixes)


class Generator:
    """Answers prompts and chats with one generative bundle. Build with
    :func:`modelyard.runtime.load` (or :func:`load_generator`).

    Args:
        bundle: the verified bundle (its manifest has a ``generation`` section).
        engine: the engine running its model file.
        context_length: tokens of context per request, prompt and answer together.
    """

    def __init__(self, bundle: Bundle, engine: LlamaCppGenerator, context_length: int) -> None:
        manifest = bundle.manifest
        self.path = bundle.path
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self.task = manifest.task
        self.labels: list[str] = []
        self.engine = engine
        self.slots = engine.slots
        self.context_length = context_length
        self.chat_template = manifest.generation.chat_template if manifest.generation else None

    def __repr__(self) -> str:
        return f"Generator({self.name!r}, version={self.version}, slots={self.slots})"

    def generate(
        self, request: str | Messages, params: GenerationParams | None = None
    ) -> Generation:
        """The whole answer to a prompt (its continuation) or a chat (the chat template's answer).

        Gathered from the engine's stream, which holds back a token that ends mid-character
        until the character is whole: llama.cpp's whole answer, cut by ``max_tokens`` there,
        would end in U+FFFD.

        Raises:
            ParamError: a malformed chat, or the prompt and ``max_tokens`` beyond the context
                (:class:`ContextLengthError`).
            DataError: the engine refused the request.
        """
        params = params or GenerationParams()
        chat = self.check(request, params)
        chunks: list[GenerationChunk] = []

        def keep(chunk: GenerationChunk) -> bool:
            chunks.append(chunk)
            return False

        self.run_stream(request, params, keep, chat)
        return gather(chunks)

    def stream(
        self, request: str | Messages, params: GenerationParams | None = None
    ) -> GenerationStream:
        """The answer piece by piece as the engine makes it (:class:`GenerationStream`); closing
        the stream stops the generation and frees its slot.

        Raises:
            ParamError, DataError: as :meth:`generate`, before anything is generated.
        """
        params = params or GenerationParams()
        chat = self.check(request, params)
        return GenerationStream(lambda on_chunk: self.run_stream(request, params, on_chunk, chat))

    def check(self, request: str | Messages, params: GenerationParams) -> bool:
        """Whether ``request`` is a chat, after checking it and that it fits in the context.

        The prompt is counted (by the engine's tokenizer, about 1 to 2 ms) only when ``max_tokens``
        is set and a bound on its length does not show that it fits.

        Raises:
            ParamError: a malformed chat or prompt; :class:`ContextLengthError`.
        """
        chat = not isinstance(request, str)
        if chat:
            check_messages(request)
            if self.chat_template is None:
                raise ParamError(
                    f"model {self.name!r} has no chat template: send a prompt", "messages"
                )
        if params.max_tokens is None:
            return chat
        if params.max_tokens >= self.context_length:
            raise ContextLengthError(
                f"max_tokens ({params.max_tokens}) must be under the model's context length "
                f"({self.context_length} tokens, prompt and answer together)",
                "max_tokens",
            )
        if self._bound(request) + params.max_tokens <= self.context_length:
            return chat
        prompt_tokens = self.engine.count_tokens(request)
        if prompt_tokens + params.max_tokens > self.context_length:
            raise ContextLengthError(
                f"this model's context length is {self.context_length} tokens; the prompt takes "
                f"{prompt_tokens} and max_tokens asks for {params.max_tokens} more "
                f"({prompt_tokens + params.max_tokens}): shorten the prompt or lower max_tokens",
                "max_tokens",
            )
        return chat

    def _bound(self, request: str | Messages) -> int:
        # at most one token per byte (byte-level and byte-fallback vocabularies) plus the
        # specials; a chat also gets the template's own text once per message and once more
        if isinstance(request, str):
            return len(request.encode()) + 4
        template = len((self.chat_template or "").encode())
        text = sum(
            len(str(m.get("content", "")).encode()) + len(str(m.get("role", ""))) for m in request
        )
        return text + template * (len(request) + 1)

    def run_stream(
        self,
        request: str | Messages,
        params: GenerationParams,
        on_chunk: Callable[[GenerationChunk], bool],
        chat: bool,
    ) -> None:
        """Stream in this thread (the engine blocks it): ``on_chunk`` gets each
        :class:`GenerationChunk`; returning True stops the generation and frees the slot.

        Raises:
            DataError: the engine refused the request.
        """
        body = self._body(request, params) | {"stream_options": {"include_usage": True}}
        failure: list[str] = []

        def each(raw: dict[str, Any]) -> bool:
            if "error" in raw or ("choices" not in raw):
                error = raw.get("error", raw)
                failure.append(
                    str(error.get("message", error) if isinstance(error, Mapping) else error)
                )
                return True
            return on_chunk(_chunk(raw, chat))

        self.engine.stream(body, each, chat=chat)
        if failure:
            raise DataError(f"llama.cpp refused the request: {failure[0]}")

    def _body(self, request: str | Messages, params: GenerationParams) -> dict[str, Any]:
        body = params.engine_body()
        if not isinstance(request, str):
            body["messages"] = [dict(m) for m in request]
            if params.logprobs or params.top_logprobs:
                body |= {"logprobs": True, "top_logprobs": params.top_logprobs}
        else:
            body["prompt"] = request
            if params.logprobs or params.top_logprobs:
                body["logprobs"] = max(params.top_logprobs, 1)
        return body

    def warmup(self) -> None:
        """One token from the engine, so the first request does not pay its lazy setup."""
        self.engine.answer(
            {"prompt": "a", "max_tokens": 1, "temperature": 0.0, "cache_prompt": False}, chat=False
        )

    def close(self) -> None:
        """Stop the engine and free the model."""
        self.engine.close()


def _chunk(raw: Mapping[str, Any], chat: bool) -> GenerationChunk:
    usage = raw.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    if not raw["choices"]:  # the usage chunk
        return GenerationChunk(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    choice = raw["choices"][0]
    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    return GenerationChunk(
        text=text or "",
        tokens=parse_tokens(choice),
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def gather(chunks: Sequence[GenerationChunk]) -> Generation:
    """A whole :class:`Generation` from a stream's chunks."""
    finish = next((c.finish_reason for c in reversed(chunks) if c.finish_reason), "stop")
    prompt = next((c.prompt_tokens for c in reversed(chunks) if c.prompt_tokens is not None), 0)
    completion = next(
        (c.completion_tokens for c in reversed(chunks) if c.completion_tokens is not None), 0
    )
    return Generation(
        text="".join(c.text for c in chunks),
        tokens=tuple(t for c in chunks for t in c.tokens),
        finish_reason=finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


_DONE = object()


@dataclass
class GenerationStream:
    """An iterator of :class:`GenerationChunk`; the engine streams in a thread of its own.

    ``close()`` (or leaving a ``with`` block, or dropping the iterator after ``break``) stops
    the generation at its next token and frees the slot.
    """

    start: Callable[[Callable[[GenerationChunk], bool]], None]
    _queue: queue.Queue[Any] = field(default_factory=queue.Queue)
    _closed: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        def work() -> None:
            try:
                self.start(self._put)
            except Exception as exc:
                self._queue.put(exc)
            self._queue.put(_DONE)

        self._thread = threading.Thread(target=work, name="modelyard-generate", daemon=True)
        self._thread.start()

    def _put(self, chunk: GenerationChunk) -> bool:
        self._queue.put(chunk)
        return self._closed.is_set()

    def __iter__(self) -> Iterator[GenerationChunk]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the generation (at its next token) and free the slot."""
        self._closed.set()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_generator(bundle: Bundle, settings: GeneratorSettings | None = None) -> Generator:
    """Start the engine a verified generative bundle names.

    Args:
        bundle: from :func:`modelyard.bundle.verify_bundle`, task ``generation``.
        settings: slots, threads and context per slot.

    Raises:
        BundleError: no generation section, an unknown engine, or the engine cannot load it.
    """
    settings = settings or GeneratorSettings()
    spec = bundle.manifest.generation
    if spec is None:
        raise BundleError(f"{bundle.path}: a generative bundle without a generation section")
    engine_cls = ENGINES.get(spec.engine)
    if engine_cls is None:
        raise BundleError(
            f"{bundle.path}: engine {spec.engine!r} is not supported here; "
            f"known: {', '.join(ENGINES)}"
        )
    context = min(settings.context_length or spec.context_length, spec.context_length)
    engine = engine_cls(
        Path(bundle.path) / bundle.manifest.model_file,
        context_length=context,
        slots=settings.slots,
        threads=settings.threads,
        prompt_cache_mib=settings.prompt_cache_mib,
    )
    return Generator(bundle, engine, context)
