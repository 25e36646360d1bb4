"""Reading the repository directory off the event loop, each model alone and bounded in time.

:class:`RepositoryReader` runs :class:`~modelyard.serving.discovery.DiskScanner` with each model
in a daemon thread of its own and one deadline for the pass. A model whose read fails or does
not return in time (a hung network mount) keeps what was read of it before and holds back
neither the other models nor shutdown: nothing waits on a daemon thread, and while one model's
read hangs no second read of it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from modelyard.serving.discovery import DiskScanner, ModelOnDisk

log = logging.getLogger("modelyard.serving")
T = TypeVar("T")


class RepositoryReader:
    """What the repository holds, read with bounds (see the module docstring).

    Args:
        scanner: reads one model directory, or lists them.
        timeout_s: how long one pass waits for a model's files.
    """

    def __init__(self, scanner: DiskScanner, timeout_s: float = 10.0) -> None:
        self.scanner = scanner
        self._reads = BoundedReads(timeout_s)
        self._seen: dict[str, ModelOnDisk] = {}  # each model as last read

    async def read(self) -> dict[str, ModelOnDisk] | None:
        """Each model as it is on disk now, or as last read when its read fails or hangs."""
        listing = await self._reads.run("", self.scanner.model_dirs)
        if not listing.done:
            return None
        if listing.error is not None:
            log.error("cannot list the model repository %s: %s", self.scanner.root, listing.error)
            return None
        dirs: list[Path] = listing.value
        reads = await self._reads.run_all({d.name: (self.scanner.scan_model, d) for d in dirs})
        found: dict[str, ModelOnDisk] = {}
        for d in dirs:
            read = reads[d.name]
            if read.done and read.error is None:
                found[d.name] = self._seen[d.name] = read.value
                continue
            if read.error is not None:
                log.error("%s: cannot read the model's files: %s", d, read.error)
            elif read.first:
                log.error(
                    "%s: reading the model's files took over %g s (a hung mount?); keeping "
                    "what was read before",
                    d,
                    self._reads.timeout_s,
                )
            if d.name in self._seen:
                found[d.name] = self._seen[d.name]
        self._seen = {n: m for n, m in self._seen.items() if n in found}
        return found


@dataclass
class Read:
    """One bounded read: done (a value or an error), or still running past its deadline."""

    done: bool
    value: Any = None
    error: BaseException | None = None
    first: bool = True  # the first pass to find it not done (later ones say nothing more)


class BoundedReads:
    """Filesystem reads in daemon threads, each waited on for at most ``timeout_s``.

    A read past its deadline is left running (a thread blocked in the kernel cannot be
    stopped) and no second read under its key starts until it returns; its late result is
    dropped. Daemon threads: neither the event loop's shutdown nor the interpreter's exit waits
    on them, so a hung read never holds up SIGTERM.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._hung: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, fn: Callable[..., T], *args: Any) -> Read:
        return (await self.run_all({key: (fn, *args)}))[key]

    async def run_all(self, calls: dict[str, tuple[Any, ...]]) -> dict[str, Read]:
        """``{key: (fn, *args)}`` -> ``{key: Read}``, all started at once, one deadline."""
        out: dict[str, Read] = {}
        started: dict[str, asyncio.Future[Any]] = {}
        for key, (fn, *args) in calls.items():
            hung = self._hung.get(key)
            if hung is not None and not hung.done():
                out[key] = Read(done=False, first=False)  # still blocked from a pass before
                continue
            _drop(self._hung.pop(key, None))  # returned late: its result is stale
            started[key] = in_daemon_thread(fn, *args)
        if started:
            await asyncio.wait(started.values(), timeout=self.timeout_s)
        for key, fut in started.items():
            if not fut.done():
                self._hung[key] = fut
                out[key] = Read(done=False)
            elif fut.exception() is not None:
                out[key] = Read(done=True, error=fut.exception())
            else:
                out[key] = Read(done=True, value=fut.result())
        return out


def _drop(fut: asyncio.Future[Any] | None) -> None:
    """Forget a finished future, its exception retrieved (else asyncio logs it as lost)."""
    if fut is not None and fut.done() and not fut.cancelled():
        fut.exception()


def in_daemon_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` in a daemon thread; its result (or exception) as a future of this loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(value: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def work() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = fn(*args)
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(deliver, value, error)

    threading.Thread(target=work, name="modelyard-read", daemon=True).start()
    return fut
