"""The HTTP layer against what a hostile probe found, over raw sockets to a real server.

A half-closed client is answered and counted as answered; a client gone before its answer is
counted 499, not 200; transfer and content codings the server does not implement are refused
(501, 415) instead of read as a plain body; a trailing slash is answered at the canonical path,
never redirected to the client's ``Host``; a client that resets the connection under pipelined
requests leaves no "Exception in ASGI application" in the log.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest
from helpers.rawhttp import connect, exchange
from helpers.serving import ServerProcess

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

BODY = b'{"texts": ["a fine film", "dull"]}'
PREDICT = (
    b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    + BODY
)
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"


def _count(server: ServerProcess, status: int) -> float:
    """modelyard_requests_total for /v1 predict of tiny with ``status`` (0 when never counted)."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    pattern = (
        r'^modelyard_requests_total\{endpoint="predict",model="tiny",'
        rf'status="{status}",version="1"\}} (\S+)$'
    )
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))


def _read_to_eof(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout_s
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return out
        out += chunk
    raise TimeoutError(f"the server did not close the connection; read {out!r:.300}")


def test_a_half_closed_client_gets_its_answer_and_is_counted_once(
    server: ServerProcess, reliability
) -> None:
    before = _count(server, 200)
    cases = {"a prediction": (PREDICT, 1), "a GET": (LIVE, 0), "two pipelined": (PREDICT * 2, 2)}
    for name, (raw, predictions) in cases.items():
        with connect(server.port, 5) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)  # "no more requests": HTTP allows a half-close
            got = _read_to_eof(sock)  # every answer, then the server's close
        statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", got)
        assert statuses == [b"200"] * raw.count(b"HTTP/1.1"), (name, got[:300])
        assert got.count(b'"predictions"') == predictions, name
    sent = sum(p for _, p in cases.values())
    assert _count(server, 200) - before == sent  # counted what was sent, once each
    reliability.record(
        "input",
        "a prediction, a GET and two pipelined predictions, each followed by shutdown(SHUT_WR)",
        len(cases),
        f"every request answered 200, then the connection closed; /metrics counted the {sent} "
        "predictions sent",
    )


@pytest.mark.parametrize(
    ("header", "status", "words"),
    [
        (b"Transfer-Encoding: gzip, chunked", 501, "transfer coding"),
        (b"Transfer-Encoding: deflate\r\nTransfer-Encoding: chunked", 501, "transfer coding"),
        (b"Content-Encoding: gzip", 415, "content coding"),
        (b"Content-Encoding: br, identity", 415, "content coding"),
    ],
    ids=["gzip, chunked", "two Transfer-Encodings", "false gzip", "br"],
)
def test_an_unsupported_coding_is_refused_not_read_as_plain(
    server: ServerProcess, header: bytes, status: int, words: str, reliability
) -> None:
    head = b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: t\r\n" + header + b"\r\n"
    if b"chunked" in header:
        raw = head + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    else:
        raw = head + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    r = exchange(server.port, raw)
    assert r.status == status, r
    assert r.json_error is not None and words in r.json_error, r
    assert r.closed  # the body was not read: nothing after it can be trusted as a request
    # what the server does implement still works
    ok = exchange(
        server.port,
        head.split(header)[0] + b"Content-Encoding: identity\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY,
    )
    assert ok.status == 200, ok
    reliability.record(
        "input",
        f"a plain body sent with `{header.decode()}`".replace("\r\n", "` + `"),
        1,
        f"{status} JSON naming the {words}, then a close (request smuggling needs it read)",
    )


def test_a_trailing_slash_is_answered_without_echoing_the_host(
    server: ServerProcess, reliability
) -> None:
    paths = [b"/v1/models/", b"/v2/", b"/v2/health/live/", b"/v2/models/tiny/"]
    for path in paths:
        raw = b"GET " + path + b" HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        r = exchange(server.port, raw)
        assert r.status == 200, (path, r)
        assert "location" not in r.headers and b"evil" not in r.body, (path, r)
        assert r.headers["content-type"].startswith("application/json")
    r = exchange(server.port, b"GET /v9/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert r.status == 404 and r.json_error is not None and "location" not in r.headers
    reliability.record(
        "input",
        "GET with a trailing slash and `Host: evil.example` ("
        + ", ".join(p.decode() for p in paths)
        + ")",
        len(paths),
        "each answered 200 JSON at the canonical path; no redirect, no Location, no host echoed",
    )


def test_clients_that_reset_under_pipelined_requests_log_no_application_error(
    repo: Path, reliability
) -> None:
    body = b'{"texts": [' + b",".join([b'"' + b"word " * 200 + b'"'] * 64) + b"]}"
    raw = (
        b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body
    ) * 3
    trials = 30
    proc = ServerProcess(repo)
    try:
        for _ in range(trials):
            with connect(proc.port, 5) as sock:
                sock.sendall(raw)
                time.sleep(0.02)  # the first is in inference, the others wait (reads paused)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # closed with a reset: every write the server still has for it fails
        assert exchange(proc.port, LIVE + b"").status == 200
    finally:
        proc.proc.terminate()
        try:
            out = proc.proc.communicate(timeout=20)[0].decode(errors="replace")
        except Exception:
            proc.proc.kill()
            raise
    assert proc.proc.returncode == 0
    assert "Exception in ASGI application" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    reliability.record(
        "input",
        "a client that pipelines 3 large predictions, then resets the connection",
        trials,
        "no 'Exception in ASGI application' and no traceback in the log; a clean exit (0)",
    )


def test_an_answer_the_client_never_got_is_counted_499_not_200(tmp_path: Path, reliability) -> None:
    """ASGI 2.4: ``send`` to a closed connection raises OSError; the route counts 499."""
    import asyncio

    from helpers.serving import toy_loader, toy_repo

    from modelyard.config import ServeConfig
    from modelyard.serving import create_app

    app = create_app(
        str(toy_repo(tmp_path / "models", {"toy": [1]})),
        ServeConfig(),
        loader=toy_loader,
        poll=False,
    )
    state = app.state.server

    async def gone(message: dict) -> None:
        raise ConnectionResetError("the client closed the connection")

    async def run() -> None:
        await state.repo.start(poll=False)
        try:
            body = b'{"texts": ["a"]}'
            delivered = False

            async def receive() -> dict:
                nonlocal delivered
                if delivered:
                    await asyncio.sleep(10)
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}

            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/models/toy/predict",
                "raw_path": b"/v1/models/toy/predict",
                "query_string": b"",
                "root_path": "",
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 2),
                "headers": [(b"content-length", str(len(body)).encode())],
            }
            await asyncio.wait_for(app(scope, receive, gone), 10)  # nothing escapes the app
        finally:
            await state.repo.stop()

    asyncio.run(run())
    text = state.metrics.render().decode()
    assert re.search(r'modelyard_requests_total\{[^}]*status="499"[^}]*\} 1\.0', text), text
    assert not re.search(r'modelyard_requests_total\{[^}]*status="200"', text), text
    reliability.record(
        "input",
        "an answer whose send fails (the client closed the connection first)",
        1,
        "counted as 499 in /metrics, not 200; no exception out of the app",
    )
