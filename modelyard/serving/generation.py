"""One loaded generative version's admission and streams: what the batcher is to a classifier.

:class:`GenerationQueue` admits at most ``slots`` requests into the engine at once (the engine
decodes them together: continuous batching) and lets at most ``max_waiting`` more wait for a
slot; past that a request is refused at once (503 + Retry-After), and one that waits past its
deadline is a 504. Each admitted request streams in a worker thread of its own (the engine blocks
it); every chunk crosses to the event loop with ``call_soon_threadsafe`` into an asyncio queue, so
nothing blocks the loop. Cancelling (a client gone, a deadline) stops the engine at its next token
and its slot counts as free the moment the engine returns it.

The metrics are named as vLLM names them, with a ``model_name`` label, so dashboards built for
vLLM read them unchanged (:class:`GenerationMetrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelyard.runtime.generation_params import GenerationParams
from modelyard.runtime.generator import GenerationChunk, Generator
from modelyard.runtime.llama_cpp import Messages
from modelyard.serving.batcher import BatcherClosedError, QueueFullError, RequestTimeoutError

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_END = object()


class GenerationMetrics:
    """vLLM's metric names (``vllm:num_requests_running`` ...) in the server's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        label = ["model_name"]
        self.running = Gauge(
            "vllm:num_requests_running",
            "Requests decoding in the engine's slots",
            label,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests waiting for a slot",
            label,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from the request's arrival (its wait for a slot included) to its first token",
            label,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between two generated tokens of one request",
            label,
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from the request's arrival to its last token",
            label,
            buckets=_E2E_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed", label, registry=registry
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated", label, registry=registry
        )


@dataclass
class Answer:
    """A whole answer gathered from its chunks (a request that did not stream)."""

    text: str
    tokens: list[Any]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class GenerationQueue:
    """Admission and streaming for one loaded generative version (see the module docstring).

    Args:
        generator: the loaded :class:`~modelyard.runtime.generator.Generator`.
        name: the model's name (the metrics label).
        max_waiting: requests that may wait for a slot beyond those decoding.
        metrics: where to count (``None``: nowhere).
    """

    def __init__(
        self,
        generator: Generator,
        name: str,
        *,
        max_waiting: int,
        metrics: GenerationMetrics | None = None,
    ) -> None:
        self.generator = generator
        self.name = name
        self.slots = generator.slots
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self.closed = False
        self._free = asyncio.Semaphore(self.slots)
        self._idle = asyncio.Event()
        self._idle.set()
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix=f"modelyard-gen-{name}")
        self._metrics = metrics
        self._gauges()  # at 0 from the start, so dashboards see the model before its first request

    @property
    def queued(self) -> int:
        """Requests waiting for a slot (the server's queue-depth gauge)."""
        return self.waiting

    async def start(self) -> None:
        """Nothing to start: the engine is running once loaded."""

    async def stop(self, *, drain: bool = True) -> None:
        """Refuse new requests; let those admitted finish (``drain``), then stop the engine."""
        self.closed = True
        if drain:
            await self._idle.wait()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.running == 0:
            await asyncio.get_running_loop().run_in_executor(None, self.generator.close)

    def _gauges(self, running: int = 0, waiting: int = 0) -> None:
        # moved by differences: two loaded versions of one model (aliases) add up under its name
        self.running += running
        self.waiting += waiting
        if self._metrics is not None:
            self._metrics.running.labels(self.name).inc(running)
            self._metrics.waiting.labels(self.name).inc(waiting)
        if self.running + self.waiting == 0:
            self._idle.set()
        else:
            self._idle.clear()

    async def _admit(self, deadline: float) -> None:
        if self.closed:
            raise BatcherClosedError(f"model {self.name!r} is stopping")
        if self.running + self.waiting >= self.slots + self.max_waiting:
            raise QueueFullError(
                f"model {self.name!r} is busy: {self.running} requests decoding and "
                f"{self.waiting} waiting; retry later"
            )
        self._gauges(waiting=1)
        try:
            await asyncio.wait_for(self._free.acquire(), max(0.0, deadline - time.monotonic()))
        except BaseException as exc:  # a timeout, or the client gone (cancelled)
            self._gauges(waiting=-1)
            if isinstance(exc, TimeoutError):
                raise RequestTimeoutError("no decoding slot came free in time") from None
            raise
        self._gauges(running=1, waiting=-1)  # in one step: a drain never sees it idle between

    def _release(self, _: object = None) -> None:
        self._free.release()
        self._gauges(running=-1)

    async def stream(
        self, request: str | Messages, params: GenerationParams, *, timeout_s: float
    ) -> AsyncIterator[GenerationChunk]:
        """The answer's chunks as the engine makes them. Leaving the iteration early (a client
        gone: the generator is closed or cancelled) stops the engine at its next token.

        Raises:
            QueueFullError: every slot busy and the waiting room full (503).
            RequestTimeoutError: no slot within, or no end of the answer within, ``timeout_s``.
            BatcherClosedError: the version is stopping.
            ParamError, DataError: the request cannot be answered (400).
        """
        arrived = time.monotonic()
        deadline = arrived + timeout_s
        loop = asyncio.get_running_loop()
        # the prompt is checked (and counted, if need be) off the loop, before it takes a slot
        chat = await loop.run_in_executor(None, self.generator.check, request, params)
        await self._admit(deadline)
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody reads any more
                loop.call_soon_threadsafe(chunks.put_nowait, item)

        def on_chunk(chunk: GenerationChunk) -> bool:
            put(chunk)
            return cancel.is_set()

        def work() -> None:
            try:
                self.generator.run_stream(request, params, on_chunk, chat)
            except Exception as exc:
                put(exc)
            put(_END)

        try:
            running = loop.run_in_executor(self._pool, work)
        except RuntimeError:  # the pool was shut down: the version is stopping
            self._release()
            raise BatcherClosedError(f"model {self.name!r} is stopping") from None
        running.add_done_callback(self._release)  # the slot is free when the engine returns
        try:
            async for chunk in self._timed(chunks, arrived, deadline):
                yield chunk
        finally:
            cancel.set()

    async def _timed(
        self, chunks: asyncio.Queue[Any], t0: float, deadline: float
    ) -> AsyncIterator[GenerationChunk]:
        last = t0
        generated = prompt = 0
        try:
            while True:
                try:
                    item = await asyncio.wait_for(chunks.get(), deadline - time.monotonic())
                except TimeoutError:
                    raise RequestTimeoutError("the answer took longer than the deadline") from None
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                now = time.monotonic()
                if item.tokens or item.text:
                    if self._metrics is not None:
                        child = self._metrics.ttft if generated == 0 else self._metrics.itl
                        child.labels(self.name).observe(now - (t0 if generated == 0 else last))
                    generated += max(1, len(item.tokens))
                    last = now
                if item.prompt_tokens is not None:
                    prompt = item.prompt_tokens
                if item.completion_tokens is not None:
                    generated = item.completion_tokens
                yield item
        finally:
            if self._metrics is not None:
                self._metrics.e2e.labels(self.name).observe(time.monotonic() - t0)
                self._metrics.prompt_tokens.labels(self.name).inc(prompt)
                self._metrics.generation_tokens.labels(self.name).inc(generated)

    async def answer(
        self, request: str | Messages, params: GenerationParams, *, timeout_s: float
    ) -> Answer:
        """The whole answer, gathered from the stream (so a deadline stops it too)."""
        text: list[str] = []
        tokens: list[Any] = []
        finish, prompt, completion = "stop", 0, 0
        async for chunk in self.stream(request, params, timeout_s=timeout_s):
            text.append(chunk.text)
            tokens.extend(chunk.tokens)
            finish = chunk.finish_reason or finish
            prompt = chunk.prompt_tokens if chunk.prompt_tokens is not None else prompt
            if chunk.completion_tokens is not None:
                completion = chunk.completion_tokens
        return Answer("".join(text), tokens, finish, prompt, completion)
