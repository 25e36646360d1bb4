"""The OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` over
the generative versions the repository serves, and the ``data`` list of ``GET /v1/models``.

A request is parsed (:mod:`~modelyard.serving.openai_protocol`), its model looked up by name
(``NAME``, ``NAME:VERSION`` or ``NAME:ALIAS``), and answered through the version's
:class:`~modelyard.serving.generation.GenerationQueue`: whole, or as server-sent events ending in
``data: [DONE]``. A client that leaves (mid-stream, or while a whole answer is made) stops the
engine at its next token. The first chunk is awaited before the response starts, so a full
server, a prompt too long or a bad parameter is an HTTP status, never an event in a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from modelyard.config import ServeConfig
from modelyard.errors import DataError
from modelyard.runtime.generation_params import ParamError
from modelyard.runtime.generator import GenerationChunk
from modelyard.serving.batcher import RequestTimeoutError
from modelyard.serving.generation import GenerationQueue
from modelyard.serving.openai_protocol import (
    SSE_DONE,
    CompletionRequest,
    Shaper,
    error_body,
    error_payload,
    parse_request,
    sse,
)
from modelyard.serving.repository import ModelEntry, ModelRepository
from modelyard.serving.routing import read_body, url_version

JSON = "application/json"
GONE = object()  # the client disconnected before the answer was ready
log = logging.getLogger("modelyard.serving")


class Served(Protocol):
    """The metrics labels a handler fills in (the app's ``_Served``)."""

    model: str
    version: str


def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Any error on these routes, in OpenAI's shape."""
    return Response(
        error_body(status, message), status_code=status, headers=headers, media_type=JSON
    )


def _bad(exc: DataError) -> Response:
    param = exc.param if isinstance(exc, ParamError) else None
    return Response(error_body(400, str(exc), param), status_code=400, media_type=JSON)


def lookup(repo: ModelRepository, model: str, served: Served) -> GenerationQueue:
    """The generation queue of the version ``model`` names (``NAME[:VERSION or ALIAS]``).

    Raises:
        ModelNotFoundError: no such model or version (404).
        ModelUnavailableError: it failed to load (503).
        ParamError: the model is a classifier (400).
    """
    name, _, ref = model.partition(":")
    mv = repo.get(name, url_version(ref) if ref else None)
    served.model, served.version = mv.name, str(mv.version)
    if not isinstance(mv.batcher, GenerationQueue):
        raise ParamError(
            f"model {mv.name!r} is a {mv.predictor.task} model, not a generative one: "
            f"POST /v1/models/{mv.name}/predict",
            "model",
        )
    return mv.batcher


def completions_handler(
    repo: ModelRepository, settings: ServeConfig, *, chat: bool
) -> Callable[[Request, Served], Awaitable[Response]]:
    """The handler of ``/v1/chat/completions`` (``chat``) or ``/v1/completions``."""

    async def handle(request: Request, served: Served) -> Response:
        body = await read_body(request, settings.max_body_bytes)
        try:
            parsed = parse_request(body, chat=chat)
            queue = lookup(repo, parsed.model, served)
            shaper = Shaper(parsed, f"{served.model}-v{served.version}")
            timeout = settings.generation_timeout_s
            if parsed.stream:
                chunks = queue.stream(parsed.request, parsed.params, timeout_s=timeout)
                first = await _unless_gone(request.receive, _first(chunks))
                if first is GONE:  # left while waiting for a slot or the first token
                    await chunks.aclose()  # type: ignore[attr-defined]
                    raise ClientDisconnect()
                return EventStream(_events(shaper, parsed, first, chunks))
            answer = await _unless_gone(
                request.receive, queue.answer(parsed.request, parsed.params, timeout_s=timeout)
            )
        except DataError as exc:  # a bad parameter, or one the engine refused
            return _bad(exc)
        if answer is GONE:
            raise ClientDisconnect()
        event = shaper.answer(
            answer.text,
            answer.tokens,
            answer.finish_reason,
            answer.prompt_tokens,
            answer.completion_tokens,
        )
        return Response(orjson.dumps(event), media_type=JSON)

    return handle


async def _first(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise


async def _events(
    shaper: Shaper,
    parsed: CompletionRequest,
    first: GenerationChunk | None,
    chunks: AsyncIterator[GenerationChunk],
) -> AsyncIterator[bytes]:
    prompt = completion = 0
    try:
        pending = [first] if first is not None else []
        opened = False
        while True:
            if pending:
                chunk = pending.pop()
            else:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
            prompt = chunk.prompt_tokens if chunk.prompt_tokens is not None else prompt
            completion = (
                chunk.completion_tokens if chunk.completion_tokens is not None else completion
            )
            event = shaper.chunk(chunk, first=not opened)
            if event is not None:
                opened = True
                yield sse(event)
    except Exception as exc:  # the headers are out: the error is the stream's last event
        status = 504 if isinstance(exc, RequestTimeoutError) else 400
        if not isinstance(exc, RequestTimeoutError | DataError):
            log.exception("a generation stream failed")
            status = 500
        yield sse(error_payload(status, str(exc) if status < 500 else "generation failed"))
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    if parsed.include_usage:
        yield sse(shaper.usage_chunk(prompt, completion))
    yield SSE_DONE


async def _unless_gone(receive: Receive, work: Awaitable[Any]) -> Any:
    """``work``'s result, or :data:`GONE` (``work`` cancelled) when the client disconnects
    first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return GONE if task.cancelled() else task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Response):
    """Server-sent events from an async iterator of bytes. A client that disconnects is seen at
    once (not at the next write) and the iterator is closed, which stops the engine."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def write() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        writing = asyncio.ensure_future(write())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({writing, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not writing.done():
                writing.cancel()
            try:
                with contextlib.suppress(asyncio.CancelledError, OSError, ClientDisconnect):
                    await writing
            finally:  # whatever the write raised, the engine stops at its next token
                await self.events.aclose()  # type: ignore[attr-defined]
        if not writing.cancelled() and writing.exception() is None:
            return
        error = None if writing.cancelled() else writing.exception()
        if error is not None and not isinstance(error, OSError | ClientDisconnect):
            log.error("a generation stream failed", exc_info=error)
        raise ClientDisconnect()


def model_list(models: dict[str, ModelEntry], created: float) -> list[dict[str, Any]]:
    """OpenAI's ``data`` of ``GET /v1/models``: every model whose served version generates."""
    out = []
    for name, entry in sorted(models.items()):
        mv = entry.versions.get(entry.served) if entry.served is not None else None
        if mv is not None and isinstance(mv.batcher, GenerationQueue):
            out.append(
                {"id": name, "object": "model", "created": int(created), "owned_by": "modelyard"}
            )
    return out
