"""Raw HTTP/1.1 over a socket, for requests no HTTP client would send (tests only, 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawResponse:
    """One answer read off a socket; ``status`` is 0 when the server sent nothing."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed_s: float = 0.0
    closed: bool = False  # the server closed the connection after the answer

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def json_error(self) -> str | None:
        """The ``error`` of a JSON ``{"error": "..."}`` body (or the ``message`` of OpenAI's
        ``{"error": {"message": ...}}`` on the OpenAI routes), else None."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        return error if isinstance(error, str) else None


def connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def exchange(port: int, data: bytes, timeout_s: float = 5.0, *, head: bool = False) -> RawResponse:
    """Send ``data`` on a new connection and read the answer (no body when ``head``)."""
    t0 = time.monotonic()
    with connect(port, timeout_s) as sock:
        with contextlib.suppress(OSError):  # refused mid-send: the answer is still to be read
            sock.sendall(data)
        return read_response(sock, t0, timeout_s, head=head)


def read_response(
    sock: socket.socket, t0: float, timeout_s: float = 5.0, *, head: bool = False
) -> RawResponse:
    """Read one answer (to the end of its body, then whether the server closed) off ``sock``."""
    buf = b""
    deadline = t0 + timeout_s
    closed = False
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            status, headers = _parse_head(buf[:head_end])
            length = 0 if head else int(headers.get("content-length", "0"))
            if len(buf) >= head_end + 4 + length:
                body = buf[head_end + 4 : head_end + 4 + length]
                if not closed and headers.get("connection") == "close":
                    closed = _reads_eof(sock, deadline)
                return RawResponse(status, headers, body, time.monotonic() - t0, closed)
        chunk = _recv(sock, deadline)
        if not chunk:
            closed = True
            if head_end < 0:
                return RawResponse(0, elapsed_s=time.monotonic() - t0, closed=True)
            status, headers = _parse_head(buf[:head_end])
            return RawResponse(status, headers, buf[head_end + 4 :], time.monotonic() - t0, True)
        buf += chunk


def _recv(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no complete answer in time")
    sock.settimeout(left)
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _reads_eof(sock: socket.socket, deadline: float) -> bool:
    try:
        while _recv(sock, deadline):
            pass  # nothing should follow the answer; drain until the close
    except TimeoutError:
        return False
    return True


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers
