"""The dynamic batcher on toy functions: grouping, idle fast path, failures, limits, shutdown."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from modelyard.serving.batcher import (
    BatcherClosedError,
    BatchInfo,
    DynamicBatcher,
    QueueFullError,
    RequestTimeoutError,
    RequestTooLargeError,
)

pytestmark = pytest.mark.unit

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), 20))  # type: ignore[arg-type]


class Recorder:
    """A batch function that doubles numbers, records batch sizes, and can be held by a gate."""

    def __init__(self, gate: threading.Event | None = None, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.gate = gate
        self.fail_on = fail_on
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.sizes.append(len(items))
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("boom")
        return [2 * x for x in items]


async def wait_started(fn: Recorder) -> None:
    # the worker thread signals when it has taken a batch
    await asyncio.get_running_loop().run_in_executor(None, fn.started.wait, 10)


def test_results_come_back_in_order_per_request() -> None:
    async def main() -> list[list[int]]:
        b: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), max_batch_size=8)
        await b.start()
        out = await asyncio.gather(*(b.submit([i, i + 100, i + 200]) for i in range(10)))
        await b.stop()
        return out

    out = run(main)
    assert out == [[2 * i, 2 * (i + 100), 2 * (i + 200)] for i in range(10)]


def test_lone_request_on_idle_worker_does_not_wait_for_the_delay() -> None:
    async def main() -> float:
        b: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), max_delay_ms=60_000)
        await b.start()
        t0 = time.perf_counter()
        assert await b.submit([1]) == [2]
        took = time.perf_counter() - t0
        await b.stop()
        return took

    assert run(main) < 5.0  # far below the 60 s delay


def test_requests_arriving_while_busy_share_a_batch_of_texts() -> None:
    gate = threading.Event()
    fn = Recorder(gate)
    infos: list[BatchInfo] = []

    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            fn, max_batch_size=16, max_delay_ms=60_000, on_batch=infos.append
        )
        await b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await wait_started(fn)
        # 5 requests of 3 texts each queue up while the worker is held
        rest = [asyncio.ensure_future(b.submit([i] * 3)) for i in range(1, 6)]
        await asyncio.sleep(0)
        assert b.queued == 15
        gate.set()
        await asyncio.gather(first, *rest)
        await b.stop()

    run(main)
    assert fn.sizes == [1, 15]
    assert [i.requests for i in infos] == [1, 5]
    assert all(i.ok for i in infos)


def test_a_batch_never_exceeds_max_batch_size_and_big_requests_are_split() -> None:
    gate = threading.Event()
    fn = Recorder(gate)

    async def main() -> list[int]:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_batch_size=4, max_delay_ms=60_000)
        await b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await wait_started(fn)
        small = [asyncio.ensure_future(b.submit([1, 2, 3])) for _ in range(3)]
        big = asyncio.ensure_future(b.submit(list(range(10))))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *small)
        out = await big
        await b.stop()
        return out

    assert run(main) == [2 * x for x in range(10)]
    assert max(fn.sizes) <= 4
    assert sum(fn.sizes) == 1 + 9 + 10


def test_a_failure_answers_every_request_of_its_batch_and_later_batches_work() -> None:
    gate = threading.Event()
    fn = Recorder(gate, fail_on=-1)

    async def main() -> tuple[list[Any], list[int]]:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_batch_size=64, max_delay_ms=60_000)
        await b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await wait_started(fn)
        batch = [asyncio.ensure_future(b.submit([x])) for x in (1, -1, 2)]
        await asyncio.sleep(0)
        gate.set()
        await first
        results = await asyncio.gather(*batch, return_exceptions=True)
        after = await b.submit([5])
        await b.stop()
        return results, after

    results, after = run(main)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert after == [10]


def test_wrong_number_of_results_is_an_error_for_everyone() -> None:
    async def main() -> BaseException | list[int]:
        b: DynamicBatcher[int, int] = DynamicBatcher(lambda items: items[:-1])
        await b.start()
        try:
            return await b.submit([1, 2])
        except RuntimeError as exc:
            return exc
        finally:
            await b.stop()

    assert isinstance(run(main), RuntimeError)


def test_full_queue_refuses_instead_of_growing() -> None:
    gate = threading.Event()
    fn = Recorder(gate)

    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_queue=5, max_delay_ms=60_000)
        await b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await wait_started(fn)
        queued = [asyncio.ensure_future(b.submit([1, 2])) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await b.submit([3, 4])  # 4 queued + 2 > 5
        assert b.queued == 4
        gate.set()
        await asyncio.gather(first, *queued)
        await b.stop()

    run(main)


def test_request_larger_than_the_whole_queue_is_too_large_not_full() -> None:
    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), max_queue=3)
        await b.start()
        with pytest.raises(RequestTooLargeError, match=r"has 4 texts.*at most 3 texts"):
            await b.submit([1, 2, 3, 4])  # an empty queue: waiting would never make room
        assert b.queued == 0
        assert await b.submit([1, 2, 3]) == [2, 4, 6]  # exactly the queue still fits
        await b.stop()

    run(main)


def test_timed_out_request_gets_an_error_and_is_dropped_from_the_queue() -> None:
    gate = threading.Event()
    fn = Recorder(gate)

    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_delay_ms=60_000)
        await b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await wait_started(fn)
        with pytest.raises(RequestTimeoutError):
            await b.submit([7], timeout=0.05)
        gate.set()
        await first
        assert await b.submit([8]) == [16]
        await b.stop()

    run(main)
    assert fn.sizes == [1, 1]  # the timed-out 7 never reached the function


def test_expired_and_cancelled_requests_give_their_queue_places_back_at_once() -> None:
    gate = threading.Event()
    fn = Recorder(gate)

    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            fn, max_batch_size=2, max_queue=4, max_delay_ms=60_000
        )
        await b.start()
        first = asyncio.ensure_future(b.submit([0]))  # held in the worker by the gate
        await wait_started(fn)
        second = asyncio.ensure_future(b.submit([1, 2]))  # dispatched, waits for the worker
        for _ in range(3):
            await asyncio.sleep(0)
        # one in the batch that collects while both workers' places are taken, one queued
        collecting = asyncio.ensure_future(b.submit([3, 4], timeout=0.2))
        queued = asyncio.ensure_future(b.submit([5, 6], timeout=0.2))
        for _ in range(3):
            await asyncio.sleep(0)
        assert b.queued == 4
        for expired in (collecting, queued):
            with pytest.raises(RequestTimeoutError):
                await expired
        assert b.queued == 0  # not only once the collector meets them again
        fits = asyncio.ensure_future(b.submit([7, 8, 9]))
        cancelled = asyncio.ensure_future(b.submit([11]))
        await asyncio.sleep(0)
        assert b.queued == 4  # the whole queue again
        with pytest.raises(QueueFullError):
            await b.submit([12])
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert b.queued == 3
        more = asyncio.ensure_future(b.submit([12]))
        gate.set()
        out = await asyncio.gather(first, second, fits, more)
        assert out == [[0], [2, 4], [14, 16, 18], [24]]
        assert b.queued == 0  # never counted back twice when the collector skips them
        await b.stop()
        assert b.queued == 0

    run(main)
    assert fn.sizes == [1, 2, 2, 1, 1]  # the expired and cancelled texts never reached it


def test_a_timed_out_or_failed_request_leaves_no_reference_cycle_behind() -> None:
    # The server raises the GC thresholds (and freezes the heap), so a request that ends in a
    # cycle lives on, with its texts, until a rare full collection: it must be freed at once.
    gate = threading.Event()
    fn = Recorder(gate, fail_on=-1)

    async def main() -> int:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_delay_ms=60_000)
        await b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await wait_started(fn)
        gc.collect()
        gc.disable()
        try:
            for i in range(20):
                with pytest.raises(RequestTimeoutError):
                    await b.submit([i], timeout=0.001)
            gate.set()
            await first
            for _ in range(20):
                with pytest.raises(RuntimeError, match="boom"):
                    await b.submit([-1])
            return gc.collect()
        finally:
            gc.enable()
            await b.stop()

    assert run(main) == 0


def test_stop_drains_queued_requests_then_refuses_new_ones() -> None:
    gate = threading.Event()
    fn = Recorder(gate)

    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_batch_size=4)
        await b.start()
        pending = [asyncio.ensure_future(b.submit([i])) for i in range(10)]
        await wait_started(fn)
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0)
        with pytest.raises(BatcherClosedError):
            await b.submit([1])
        gate.set()
        assert await asyncio.gather(*pending) == [[2 * i] for i in range(10)]
        await stopping

    run(main)


def test_stop_without_drain_fails_queued_requests() -> None:
    gate = threading.Event()
    fn = Recorder(gate)

    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn)
        await b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await wait_started(fn)
        queued = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(b.stop(drain=False))
        with pytest.raises(BatcherClosedError):
            await queued
        gate.set()
        assert await first == [0]
        await stopping

    run(main)


def test_empty_request_needs_no_batch() -> None:
    async def main() -> list[int]:
        b: DynamicBatcher[int, int] = DynamicBatcher(Recorder())
        await b.start()
        out = await b.submit([])
        await b.stop()
        return out

    assert run(main) == []
