"""Dynamic batching: many small requests in, a few whole batches through one worker thread.

The batcher is a standalone component (Ray Serve's ``serve/batching.py`` shape): a function that
maps a list of items to a list of the same length, one future per request, and a failure in a
batch fans out to every request in it. Batching is at the *item* level: a request with five texts
contributes five items, and a batch closes at ``max_batch_size`` items.

When the worker is idle a lone request is sent at once; while the worker is busy the next batch
keeps collecting for up to ``max_delay_ms`` (and then waits its turn, still growing until full).
The queue is bounded in items, so overload is answered (``QueueFullError``) instead of growing
memory without end. A request that times out or is cancelled before its batch is dispatched gives
its places back at once (and lets go of its texts), so the bound counts only live demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

# One batch runs while the next one is closed and waiting; more would only add latency.
_MAX_IN_FLIGHT = 2


class QueueFullError(Exception):
    """The bounded queue has no room for the request; answer 503 with Retry-After."""


class RequestTooLargeError(Exception):
    """The request has more texts than the whole queue holds; retrying cannot help (413)."""


class BatcherClosedError(Exception):
    """The batcher is stopping (shutdown or an old model version draining)."""


class RequestTimeoutError(Exception):
    """The request waited longer than its timeout; answer 504."""


@dataclass
class BatchInfo:
    """What happened to one batch; handed to the ``on_batch`` hook (metrics)."""

    size: int  # items (texts) in the batch
    requests: int
    queue_s: list[float]  # per request: enqueue -> batch start
    inference_s: float  # time inside the batch function
    ok: bool


@dataclass
class _Pending(Generic[R]):
    items: Sequence[Any]
    future: asyncio.Future[Any]
    # Runs in the worker thread on this request's results (e.g. to encode its response body);
    # its return value is the request's answer. ``None``: the answer is the list of results.
    finish: Callable[[list[R]], Any] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    # Places it holds in the bounded queue: its items until its batch is dispatched, or until
    # it expires or is cancelled first (then 0, counted back exactly once: see ``_release``).
    slots: int = 0


# What an expired request's future is resolved with. A marker, not an exception: a future that
# holds an exception holds its traceback and so every frame of the request (its body and texts)
# for as long as the future lives, and a queued future lives until the collector meets it.
_EXPIRED = object()


class DynamicBatcher(Generic[T, R]):
    """Group concurrent requests into batches and run them on one dedicated worker thread.

    Args:
        fn: called in the worker thread with a list of items; returns one result per item, in
            order. Called with at most ``max_batch_size`` items (a larger request is split).
        max_batch_size: items per batch.
        max_delay_ms: how long a batch may keep collecting while the worker is busy.
        max_queue: items that may wait; more raises :class:`QueueFullError`, and a request
            larger than the whole queue raises :class:`RequestTooLargeError`.
        name: used for the worker thread's name.
        on_batch: called in the worker thread after every batch, before its requests are
            answered (metrics; must be thread-safe and must not touch the event loop).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 64,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        name: str = "model",
        on_batch: Callable[[BatchInfo], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_delay_ms >= 0")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.name = name
        self._on_batch = on_batch
        self._queue: deque[_Pending[R]] = deque()
        self._queued_items = 0
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        # The collector wants a wakeup for every new request only while it has nothing to send;
        # while a batch collects, only a full batch (or the worker finishing) wakes it, so a
        # request costs no collector round trip (event, timer, task step) of its own.
        self._want_any = True
        self._closing = False
        self._abandon = False
        self._collector: asyncio.Task[None] | None = None
        # One loop future per batch handed to the worker, resolved when its answers are in.
        self._batch_done: set[asyncio.Future[None]] = set()
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the collector task and the worker thread (call from the running event loop)."""
        if self._collector is not None:
            return
        # One thread: the runtime gets whole batches and uses its own intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{self.name}")
        self._collector = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self, *, drain: bool = True) -> None:
        """Stop accepting requests; finish (``drain``) or fail the queued ones; join the worker.

        Args:
            drain: run every queued request before stopping; otherwise they fail with
                :class:`BatcherClosedError`.
        """
        self._closing = True
        if not drain:
            self._abandon = True
            _fail(list(self._queue), BatcherClosedError(f"{self.name} is stopping"))
            for pending in self._queue:
                self._release(pending)
            self._queue.clear()
        self._wakeup.set()
        if self._collector is not None:
            await self._collector
        while self._batch_done:
            await asyncio.gather(*list(self._batch_done), return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def queued(self) -> int:
        """Items waiting (queued, or in a batch that has not been dispatched yet)."""
        return self._queued_items

    @property
    def busy(self) -> bool:
        """Whether a batch is running or waiting for the worker."""
        return self._in_flight > 0

    @property
    def closed(self) -> bool:
        return self._closing

    # -------------------------------------------------------------------------------- submit
    async def submit(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Queue the items of one request and wait for their results.

        Args:
            items: the request's items (texts); its results come back in the same order.
            timeout: seconds to wait in all; an expired request is dropped from the queue.

        Returns:
            One result per item.

        Raises:
            QueueFullError: no room in the queue. RequestTooLargeError: more items than the whole
                queue holds. BatcherClosedError: stopping.
            RequestTimeoutError: not answered within ``timeout``. Any exception of the batch.
        """
        if not items:
            self._check_open()
            return []
        return cast("list[R]", await self._wait_answer(self._enqueue(items, None), timeout))

    async def submit_with(
        self,
        items: Sequence[T],
        finish: Callable[[list[R]], S],
        timeout: float | None = None,
    ) -> S:
        """Like :meth:`submit`, but ``finish`` turns the results into the answer in the worker.

        ``finish`` runs in the worker thread right after the request's batch (so per-request
        work such as encoding a response body stays off the event loop); a failure in it fails
        only this request. For an empty request it runs here, at once.

        Returns:
            What ``finish`` returned for the request's results.
        """
        if not items:
            self._check_open()
            return finish([])
        return cast(S, await self._wait_answer(self._enqueue(items, finish), timeout))

    async def _wait_answer(self, pending: _Pending[R], timeout: float | None) -> Any:
        """Wait for one request's answer; whatever ends the wait, give its queue places back."""
        future = pending.future
        # call_later is much cheaper than asyncio.wait_for; an expired future is skipped by the
        # collector, so a timed-out request never takes a place in a batch.
        handle = None if timeout is None else future.get_loop().call_later(timeout, _expire, future)
        try:
            answer = await future
        finally:
            if handle is not None:
                handle.cancel()
            self._release(pending)  # expired or cancelled while queued: its places now
            # A failed future holds its exception, whose traceback holds this frame: without the
            # future here that is no reference cycle, freed at once, not by a rare full collection.
            del future, pending
        if answer is _EXPIRED:
            raise RequestTimeoutError(f"no answer within {timeout:g} s")
        return answer

    def _check_open(self) -> None:
        if self._closing or self._collector is None:
            raise BatcherClosedError(f"{self.name} is not accepting requests")

    def _enqueue(self, items: Sequence[T], finish: Callable[[list[R]], Any] | None) -> _Pending[R]:
        self._check_open()
        n = len(items)
        if n > self.max_queue:  # would never fit, even in an empty queue: not a 503 to retry
            raise RequestTooLargeError(
                f"request has {n} texts; the queue of {self.name} holds at most "
                f"{self.max_queue} texts"
            )
        if self._queued_items + n > self.max_queue:
            raise QueueFullError(
                f"queue of {self.name} is full ({self._queued_items} of {self.max_queue} texts)"
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = _Pending(items, future, finish, slots=n)
        self._queue.append(pending)
        self._queued_items += n
        if self._want_any or self._queued_items >= self.max_batch_size:
            self._wakeup.set()
        return pending

    def _release(self, pending: _Pending[R]) -> None:
        """Give back the queue places ``pending`` holds (once: a second call does nothing)."""
        if pending.slots:
            self._queued_items -= pending.slots
            pending.slots = 0
            if pending.future.done():  # not dispatched and never will be: drop its texts now
                pending.items, pending.finish = (), None

    # ----------------------------------------------------------------------------- collector
    def _take(self, batch: list[_Pending[R]], size: int) -> int:
        """Move queued requests into ``batch`` while they fit; return the new item count."""
        while self._queue:
            pending = self._queue[0]
            n = len(pending.items)
            if pending.future.done():  # timed out or cancelled while queued
                self._queue.popleft()
                self._release(pending)
                continue
            # A request larger than a whole batch goes alone (and is split in the worker).
            if size + n > self.max_batch_size and size > 0:
                break
            self._queue.popleft()
            batch.append(pending)
            size += n
        return size

    async def _wait(self, timeout: float | None) -> None:
        self._wakeup.clear()
        if timeout is None:
            await self._wakeup.wait()
            return
        # A timer that sets the event is much cheaper than asyncio.wait_for (no extra task).
        handle = asyncio.get_running_loop().call_later(timeout, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            handle.cancel()

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch: list[_Pending[R]] = []
            size = self._take(batch, 0)
            if not batch:
                if self._closing:
                    return
                self._want_any = True
                await self._wait(None)
                continue
            self._want_any = False
            deadline = loop.time() + self.max_delay_s
            while size < self.max_batch_size:
                before = size
                size = self._take(batch, size)
                if self._queue and size == before:
                    break  # the next request does not fit: the batch is full
                if self._queue:
                    continue
                if self._in_flight == 0 or self._closing:
                    break  # worker idle: a lone request is not made to wait
                remaining = deadline - loop.time()
                slot_free = self._in_flight < _MAX_IN_FLIGHT
                if slot_free and remaining <= 0:
                    break
                await self._wait(remaining if slot_free else None)
            while self._in_flight >= _MAX_IN_FLIGHT:
                await self._wait(None)
            # Waiting items count against max_queue until their batch is dispatched (an expired
            # or cancelled one has given its places back already).
            for pending in batch:
                self._release(pending)
            # Requests that timed out (or whose client left) while the batch collected are dropped.
            batch = [pending for pending in batch if not pending.future.done()]
            if self._abandon:
                _fail(batch, BatcherClosedError(f"{self.name} is stopping"))
                continue
            if not batch:
                continue
            size = sum(len(pending.items) for pending in batch)
            self._dispatch(loop, batch, size)

    def _dispatch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[R]], size: int
    ) -> None:
        """Hand a closed batch to the worker thread; its answers come back in one loop callback."""
        assert self._executor is not None
        done: asyncio.Future[None] = loop.create_future()
        self._batch_done.add(done)
        self._in_flight += 1
        try:
            self._executor.submit(self._work, loop, batch, size, done)
        except BaseException as exc:  # the executor is shut down: answer the batch now
            self._complete(batch, None, exc, done)

    def _work(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Pending[R]],
        size: int,
        done: asyncio.Future[None],
    ) -> None:
        """Worker thread: run the batch, finish every request, record metrics, then wake the
        loop once (``call_soon_threadsafe``) to resolve all of the batch's futures."""
        started = time.perf_counter()
        answers: list[tuple[bool, Any]] | None = None
        error: BaseException | None = None
        pending: _Pending[R] | None = None
        inference_s = 0.0
        try:
            items: list[T] = [item for pending in batch for item in pending.items]
            results, inference_s = self._call(items)
            if len(results) != len(items):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(items)} items"
                )
            answers = []
            offset = 0
            for pending in batch:
                n = len(pending.items)
                chunk = list(results[offset : offset + n])
                offset += n
                if pending.finish is None:
                    answers.append((True, chunk))
                elif pending.future.done():  # timed out or left meanwhile: nothing to encode
                    answers.append((True, None))
                else:
                    try:
                        answers.append((True, pending.finish(chunk)))
                    except Exception as exc:  # only this request fails
                        answers.append((False, exc))
        except Exception as exc:  # a failure answers every request of the batch
            error = exc
            answers = None
        if self._on_batch is not None:
            queue_s = [started - pending.enqueued for pending in batch]
            with contextlib.suppress(Exception):  # metrics never keep a batch from its answer
                self._on_batch(BatchInfo(size, len(batch), queue_s, inference_s, error is None))
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(self._complete, batch, answers, error, done)
        # A failure's traceback holds this frame (and, through f_back, the executor's, which
        # holds the batch): drop what would lead back to the futures that hold the failure,
        # so no reference cycle keeps the batch's requests alive until a full collection.
        pending = answers = error = None

    def _complete(
        self,
        batch: list[_Pending[R]],
        answers: list[tuple[bool, Any]] | None,
        error: BaseException | None,
        done: asyncio.Future[None],
    ) -> None:
        """Event loop: resolve every future of a finished batch (one callback per batch)."""
        try:
            if answers is None:
                _fail(batch, error or RuntimeError("batch failed"))
            else:
                for pending, (ok, value) in zip(batch, answers, strict=True):
                    future = pending.future
                    if not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(value)
        finally:
            batch.clear()  # the worker's frames hold this list: see the end of ``_work``
            self._in_flight -= 1
            self._wakeup.set()
            self._batch_done.discard(done)
            if not done.done():
                done.set_result(None)

    def _call(self, items: list[T]) -> tuple[list[R], float]:
        t0 = time.perf_counter()
        out: list[R] = []
        for start in range(0, len(items), self.max_batch_size):
            out.extend(self._fn(items[start : start + self.max_batch_size]))
        return out, time.perf_counter() - t0


def _fail(batch: list[_Pending[Any]], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(_EXPIRED)
