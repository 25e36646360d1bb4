"""The HTTP layer under requests no client library sends, over raw sockets to a real server.

Protocol errors (bad chunk size, bad Content-Length, unknown method, HTTP/2 preface) and invalid
UTF-8 come back as JSON with the right status; a 1 MB header is a quick 431; a head or body that
never arrives is a 408 within the timeout; connections beyond the cap get a 503 at once, and the
server answers as soon as they are gone.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.rawhttp import connect, exchange, read_response
from helpers.serving import ServerProcess

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

TIMEOUT_S = 1.0  # the tight server's head and body timeouts
SLACK_S = 1.5
CAP = 12  # the tight server's connection cap
PREDICT = b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: t\r\n"
INFER = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\n"
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def tight(repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        repo,
        *("--header-timeout-s", str(TIMEOUT_S), "--body-timeout-s", str(TIMEOUT_S)),
        *("--max-connections", str(CAP)),
    )
    yield proc
    assert proc.stop() == 0


def _with_body(start: bytes, body: bytes) -> bytes:
    return start + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body


PROTOCOL_ERRORS = {
    "chunk size not hex": (
        PREDICT + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
        "chunk size",
    ),
    "Content-Length not a number": (
        PREDICT + b"Content-Length: abc\r\n\r\n{}",
        400,
        "Content-Length",
    ),
    "two Content-Lengths": (
        PREDICT + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
        "Content-Length",
    ),
    "unknown method": (b"BREW /v2 HTTP/1.1\r\nHost: t\r\n\r\n", 405, "unknown HTTP method"),
    "binary garbage": (b"\x00\x01\x02 hello\r\n\r\n", 400, "invalid HTTP request"),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "HTTP/1.1"),
    "HTTP/7.1": (b"GET /v2 HTTP/7.1\r\nHost: t\r\n\r\n", 400, "HTTP/1.1"),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n", 400, "request target"),
    "control byte in a header": (b"GET /v2 HTTP/1.1\r\nHost: t\r\nX: \x01\r\n\r\n", 400, "header"),
}


def test_protocol_errors_are_json_with_the_right_status(server: ServerProcess, reliability) -> None:
    for name, (raw, status, words) in PROTOCOL_ERRORS.items():
        r = exchange(server.port, raw)
        assert r.status == status, (name, r)
        assert r.json_error is not None and words in r.json_error, (name, r)
        assert r.closed, name
        if status == 405:
            assert r.headers.get("allow") == "GET, HEAD, POST"
    assert exchange(server.port, LIVE).status == 200
    reliability.record(
        "input",
        "malformed HTTP: " + ", ".join(PROTOCOL_ERRORS),
        len(PROTOCOL_ERRORS),
        'each a JSON {"error"}: 400, or 405 for an unknown method (no 5xx); then a close',
    )


def test_an_upgrade_request_is_answered_as_plain_http(server: ServerProcess) -> None:
    ws = (
        b"GET /v2 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    for raw in (ws, b"GET /v2 HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"):
        r = exchange(server.port, raw)
        assert r.status == 200 and r.json()["name"] == "modelyard", r
        assert r.closed  # what follows an upgrade request is not HTTP/1.1: end with the answer


@pytest.mark.parametrize(
    ("start", "body", "offset"),
    [
        (PREDICT, b'{"texts": ["caf\xe9"]}', 15),
        (PREDICT, b'{"texts": ["\xed\xa0\x80"]}', 12),  # an encoded surrogate
        (INFER, b'{"inputs": [{"name": "text", "data": ["\xff"]}]}', 39),
    ],
    ids=["latin-1 byte", "encoded surrogate", "v2 0xff byte"],
)
def test_invalid_utf8_names_the_byte(
    server: ServerProcess, start: bytes, body: bytes, offset: int, reliability
) -> None:
    r = exchange(server.port, _with_body(start, body))
    assert r.status == 400
    assert r.json_error == f"request body is not valid UTF-8 (byte {offset})"
    reliability.record(
        "input",
        f"a JSON body with invalid UTF-8 at byte {offset} ({start.split()[1].decode()})",
        1,
        "400 naming the byte, not orjson's 'surrogates not allowed'",
    )


def test_a_1mb_header_is_a_quick_431(server: ServerProcess, reliability) -> None:
    raw = b"GET /v2 HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    r = exchange(server.port, raw)
    assert r.status == 431, r
    assert r.json_error is not None and "at most 65536 bytes" in r.json_error
    assert r.elapsed_s < 2.0, r.elapsed_s
    many = b"GET /v2 HTTP/1.1\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n"  # 160 KB of small headers
    assert exchange(server.port, many).status == 431
    assert exchange(server.port, LIVE).status == 200
    reliability.record(
        "input",
        "a 1 MB header; 20,000 small headers (160 KB)",
        2,
        f"431 JSON in {r.elapsed_s:.2f} s (head limit 64 KiB), then a close",
    )


SLOW = {
    "half a head": [b"GET /v2 HTTP/1.1\r\nHost: t\r\n"],
    "a head dripped a header at a time": [b"GET /v2 HTTP/1.1\r\n"]
    + [b"X-Drip: %d\r\n" % i for i in range(40)],
    "10 of 100 body bytes": [PREDICT + b"Content-Length: 100\r\n\r\n" + b'{"texts": ['],
    "a chunked body that stops": [
        PREDICT + b"Transfer-Encoding: chunked\r\n\r\n" + b'5\r\n{"tex\r\n'
    ],
}


@pytest.mark.parametrize("case", list(SLOW))
def test_a_head_or_body_that_does_not_arrive_is_a_408(
    tight: ServerProcess, case: str, reliability
) -> None:
    t0 = time.monotonic()
    with connect(tight.port, TIMEOUT_S + SLACK_S + 1) as sock:
        for piece in SLOW[case]:
            try:
                sock.sendall(piece)
            except OSError:
                break  # refused mid-drip
            if select.select([sock], [], [], 0.05)[0]:
                break  # answered: stop dripping
        r = read_response(sock, t0, TIMEOUT_S + SLACK_S + 1)
    assert r.status == 408, r
    assert r.json_error is not None and f"within {TIMEOUT_S:g} s" in r.json_error
    assert r.closed
    assert TIMEOUT_S - 0.2 < r.elapsed_s < TIMEOUT_S + SLACK_S, r.elapsed_s
    assert exchange(tight.port, LIVE).status == 200
    reliability.record(
        "input",
        f"a client that sends {case}, then waits",
        1,
        f"408 JSON after {r.elapsed_s:.2f} s (head and body timeouts {TIMEOUT_S:g} s), closed",
    )


SECOND = {
    "half a head": (b"GET /v2 HTTP/1.1\r\nHost", 408),
    "a bad chunk size": (PREDICT + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "a 1 MB header": (b"GET /v2 HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 431),
    "an unknown method": (b"BREW /v2 HTTP/1.1\r\nHost: t\r\n\r\n", 405),
}


@pytest.mark.parametrize("case", list(SECOND))
def test_a_kept_alive_connection_answers_a_bad_later_request_in_json(
    tight: ServerProcess, case: str
) -> None:
    raw, status = SECOND[case]
    keep = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
    with connect(tight.port, TIMEOUT_S + SLACK_S + 1) as sock:
        for _ in range(3):  # answered one after another, each within the timeouts
            sock.sendall(keep)
            assert read_response(sock, time.monotonic()).status == 200
            time.sleep(TIMEOUT_S / 2)
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            sock.sendall(raw)
        r = read_response(sock, t0, TIMEOUT_S + SLACK_S)
    assert r.status == status and r.json_error is not None and r.closed, r
    if status == 408:
        assert TIMEOUT_S - 0.2 < r.elapsed_s < TIMEOUT_S + SLACK_S, r.elapsed_s


def test_a_silent_connection_is_closed_without_an_answer(tight: ServerProcess) -> None:
    t0 = time.monotonic()
    with connect(tight.port, TIMEOUT_S + SLACK_S) as sock:
        assert sock.recv(100) == b""  # closed like an idle kept-alive connection
    assert time.monotonic() - t0 < TIMEOUT_S + SLACK_S


def test_connections_beyond_the_cap_get_a_503_and_the_server_recovers(
    tight: ServerProcess, reliability
) -> None:
    extra = 3 * CAP
    held: list[socket.socket] = []
    try:
        held = [connect(tight.port, TIMEOUT_S + SLACK_S + 1) for _ in range(CAP)]
        t0 = time.monotonic()
        refused = [exchange(tight.port, LIVE) for _ in range(extra)]
        refused_s = time.monotonic() - t0
        for r in refused:
            assert r.status == 503, r
            assert r.json_error is not None and f"at most {CAP}" in r.json_error
            assert r.headers.get("retry-after") == "1" and r.closed
        # the idle ones are let go after the head timeout; then the server answers again
        for sock in held:
            assert sock.recv(100) == b""
        live = exchange(tight.port, LIVE)
        assert live.status == 200
    finally:
        for sock in held:
            sock.close()
    reliability.record(
        "load",
        f"{CAP} idle connections (the cap), then {extra} more, each sending a request",
        CAP + extra,
        f"all {extra} got 503 JSON with Retry-After ({refused_s / extra * 1000:.1f} ms each); "
        f"the idle ones closed after {TIMEOUT_S:g} s; the server then answered 200",
    )
