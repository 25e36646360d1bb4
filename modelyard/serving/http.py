"""The HTTP/1.1 connection: uvicorn's httptools protocol with the bounds a server needs.

uvicorn answers a request it cannot parse with a ``text/plain`` 400, reads a request head of any
size, and holds a connection whose head or body never arrives for as long as the client likes.
:class:`BoundedHttpProtocol` (passed to uvicorn as its ``http`` protocol) keeps uvicorn's request
handling and adds, per connection:

- every protocol error answered with the JSON ``{"error": "..."}`` the routes use: 400 for a
  request that does not parse (request line, header, ``Content-Length``, chunk size, an HTTP
  version other than 1.x), 405 for a method no route takes (a 4xx: every such answer is the
  client's mistake, none a server error);
- a request head over ``max_header_bytes`` is a 431;
- a head that is not complete ``header_timeout_s`` after the connection (or, on a kept-alive one,
  its first byte) is a 408, and so is a body not complete ``body_timeout_s`` after its head; a
  connection that sends nothing at all is closed without an answer, like an idle kept-alive one;
- a connection beyond ``max_connections`` open ones is answered 503 with ``Retry-After`` at once;
- a transfer coding other than ``chunked`` is a 501 and a content coding other than ``identity``
  a 415: the server implements neither, and reading such a body as plain would let a proxy that
  reads these headers differently smuggle a request past it.

A client that half-closes (``shutdown(SHUT_WR)`` after its requests, which HTTP allows) gets its
answers, then the connection closes. A client gone before its answer is written is not an
application error: ``send`` raises :class:`ClientGone` (an ``OSError``, as ASGI 2.4 asks), the
route counts the request as 499, and nothing is logged as "Exception in ASGI application".

Each of these answers closes the connection, and closes it gently: the answer is sent, the write
side shut, and whatever the client still sends is read and dropped for at most ``LINGER_S``, so
the client reads the answer instead of a connection reset. An ``Upgrade`` request (WebSocket
included: the server is started without WebSocket support) is answered as plain HTTP, then the
connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import httptools
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from modelyard.serving.protocol import error_body

log = logging.getLogger("modelyard.serving")

LINGER_S = 2.0  # how long a refused connection is drained before it is closed
RETRY_AFTER_S = 1
_WARN_EVERY_S = 10.0  # at most one "connection limit reached" warning per process this often
_last_cap_warning = -_WARN_EVERY_S
_METHOD = re.compile(rb"(\r\n)*[!#$%&'*+.^_`|~0-9A-Za-z-]+ ")  # RFC 9110 token, then a space


class ClientGone(ConnectionError):
    """The client closed the connection before its answer was written (ASGI 2.4's OSError)."""


class _Refusal(Exception):
    """Raised in a parser callback to stop parsing; :meth:`BoundedHttpProtocol._refuse` answers."""

    def __init__(self, status: int, message: str, extra_headers: bytes = b"") -> None:
        super().__init__(message)
        self.status, self.message, self.extra_headers = status, message, extra_headers


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection bounds (from ServeConfig); see the module docstring."""

    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 512


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with JSON protocol errors, a head limit, timeouts and a cap.

    uvicorn builds one per connection with ``config``, ``server_state`` and ``app_state``; bind
    the limits first: ``functools.partial(BoundedHttpProtocol, limits=HttpLimits(...))``.
    """

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # bytes received while waiting for this head
        self._head_started = False  # a byte of this head has been parsed
        self._refused = False  # answered at the protocol level: drop whatever else arrives
        self.app = _QuietWhenGone(self.app)

    # ------------------------------------------------------------------ connection events
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            _warn_cap(self.limits.max_connections)
            self._refuse(
                503,
                f"too many connections (at most {self.limits.max_connections}); retry later",
                b"retry-after: %d\r\n" % RETRY_AFTER_S,
            )
            return
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client half-closed: answer the requests it sent, then close; else close now."""
        cycle = self.cycle
        between = self._in_head and not self._head_started and not self._refused
        if between and cycle is not None and not cycle.response_complete:
            last = self.pipeline[0][0] if self.pipeline else cycle  # the newest request
            last.keep_alive = False  # the connection ends with its answer
            return True  # keep the write side open (asyncio closes it when this is falsy)
        return None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # draining a refused connection
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            if _METHOD.match(data):  # a well-formed method no route takes
                # 405, not 501: the client's mistake, not a server error to page anyone about
                self._refuse(405, "unknown HTTP method", b"allow: GET, HEAD, POST\r\n")
            else:
                self._refuse(
                    400, "invalid HTTP request: the request line is not METHOD PATH HTTP/1.1"
                )
            return
        except httptools.HttpParserCallbackError as exc:
            # a callback refused the request; the cause (a request target that is not a URL,
            # say) is its context
            if isinstance(exc.__context__, _Refusal):
                r = exc.__context__
                self._refuse(r.status, r.message, r.extra_headers)
            elif _bad_url(exc):
                self._refuse(400, "invalid request target")
            else:  # not the client's doing as far as we know: keep the cause for the log
                log.warning("HTTP parser callback failed", exc_info=exc.__context__ or exc)
                self._refuse(400, "invalid HTTP request")
            return
        except httptools.HttpParserError as exc:
            if data.startswith(b"PRI * HTTP/2") or str(exc) == "Invalid HTTP version":
                self._refuse(400, "HTTP version not supported; this server speaks HTTP/1.1")
            else:
                self._refuse(400, f"invalid HTTP request: {exc}")
            return
        except httptools.HttpParserUpgrade:
            # No protocol to switch to: the request is answered as plain HTTP; what follows it
            # belongs to the protocol asked for, so the connection ends with the answer.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(
                431, f"request head too large (at most {self.limits.max_header_bytes} bytes)"
            )

    # -------------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        if self._deadline is None:  # a fresh connection's deadline already runs
            self._arm(self.limits.header_timeout_s)
        # ASGI 2.4: send() to a closed connection raises an OSError (ClientGone), so the app
        # knows its answer was not delivered
        self.scope["asgi"] = {"version": self.asgi_version, "spec_version": "2.4"}

    def on_headers_complete(self) -> None:
        _check_codings(self.headers)  # raises _Refusal: the body is not read
        self._in_head = self._head_started = False
        self._disarm()
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s)  # disarmed when the message completes

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    # -------------------------------------------------------------------------- internals
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if type(cycle) is RequestResponseCycle:  # uvicorn builds its own: extend it
            cycle.__class__ = _Cycle
        super()._start_asgi_task(cycle, app)

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._refused:
            return
        if self._in_head:
            if not self._head_started and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()  # nothing was asked: close like an idle kept-alive one
                return
            what = f"request head not received within {self.limits.header_timeout_s:g} s"
        else:
            what = f"request body not received within {self.limits.body_timeout_s:g} s"
        self._refuse(408, what)

    def _refuse(self, status: int, message: str, extra_headers: bytes = b"") -> None:
        """Answer ``status`` with a JSON error, then close gently (see the module docstring)."""
        log.info("%s: HTTP %d, %s", _peer(self.client), status, message)
        self._refused = True
        self._disarm()
        cycle: RequestResponseCycle | None = self.cycle  # in a head the previous request's
        if self._in_head:
            if cycle is not None and not cycle.response_complete:
                # The previous request's answer is still to be written: end after it, silently.
                cycle.keep_alive = False
                self.flow.pause_reading()
                return
            cycle = None
        elif self.pipeline or (cycle is not None and cycle.response_started):
            self.transport.close()  # an answer is on the wire already: nothing more can be said
            return
        if cycle is not None:  # the app waits for a body that will not come
            cycle.disconnected = True
            cycle.message_event.set()
        body = error_body(message)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            extra_headers,
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self.flow.resume_reading()  # drain what the client still sends
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle; a write to a closed connection raises ClientGone.

    uvicorn drops a write once it has seen the connection lost, but between the transport
    closing (a reset found by a write, with reads paused under pipelining) and that callback a
    write raises RuntimeError ("the handler is closed"), logged as an application error.
    """

    async def run_asgi(self, app: Any) -> None:
        # uvicorn's own 500 after an application error may find the client gone too
        with contextlib.suppress(ClientGone):
            await super().run_asgi(app)

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if not (self.disconnected or self.response_complete) and self.transport.is_closing():
            self.disconnected = True  # closed under us: nothing more reaches the client
        if self.disconnected:
            raise ClientGone("the client closed the connection before the answer was sent")
        await super().send(message)


class _QuietWhenGone:
    """The app, with a client gone before its answer not reported as an application error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # nobody to answer; the route counted it (499) where it could
        with contextlib.suppress(ClientGone, ClientDisconnect):
            await self.app(scope, receive, send)


# header -> (the codings this server implements, status, what the refusal says, extra header)
_CODINGS: dict[bytes, tuple[set[bytes], int, str, bytes]] = {
    # what llhttp decodes; anything else would be read as plain
    b"transfer-encoding": (
        {b"chunked"},
        501,
        "transfer coding {} not implemented (only chunked)",
        b"",
    ),
    # the routes decode no compressed body
    b"content-encoding": (
        {b"identity"},
        415,
        "content coding {} not supported; send the body uncompressed",
        b"accept-encoding: identity\r\n",
    ),
}


def _check_codings(headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse (raise _Refusal) a transfer or content coding this server does not implement."""
    for name, value in headers:
        known = _CODINGS.get(name)
        if known is None:
            continue
        implemented, status, message, extra = known
        codings = [c.strip().lower() for c in value.split(b",") if c.strip()]
        unknown = [c for c in codings if c not in implemented]
        if unknown:
            raise _Refusal(status, message.format(repr(unknown[0][:40].decode("latin-1"))), extra)


def _bad_url(exc: BaseException) -> bool:
    return isinstance(exc.__context__, httptools.HttpParserInvalidURLError)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"


def _warn_cap(limit: int) -> None:
    global _last_cap_warning
    now = time.monotonic()
    if now - _last_cap_warning >= _WARN_EVERY_S:
        _last_cap_warning = now
        log.warning("connection limit reached (%d open); answering 503 to new ones", limit)
