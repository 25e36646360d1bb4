"""API fuzzing from the server's own routes: hypothesis-made requests to a real server process.

Methods (known and made up), paths from the app's route table with real, wrong and odd model
names and versions, random headers, and bodies that are valid v1/v2 requests, mutated ones, any
JSON, or random bytes (sent with a Content-Length or chunked) go over 127.0.0.1. What must hold:
no answer is a 5xx other than 503/504 (load), and every answer that is not a 2xx (or a
redirect) is a JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import collections
import json
import re
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from helpers.rawhttp import RawResponse, exchange
from helpers.serving import ServerProcess, build_real_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.serving.app import create_app

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

EXAMPLES = 300
LOAD = {503, 504}  # overload and timeouts may happen; they are answers, not failures


def _routes() -> list[tuple[str, str]]:
    # the server's own description: each path its app routes, with the method it takes
    app = create_app("unused-repo", poll=False)
    return [(r.path, m) for r in app.routes for m in sorted(r.methods)]  # type: ignore[attr-defined]


ROUTES = _routes()
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
TOKEN = st.text(
    "!#$%&'*+-.^_`|~ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    min_size=1,
    max_size=12,
)
ODD_SEGMENT = st.one_of(
    st.sampled_from(["missing", "2", "0", "edge", "-1", "01", "1.0", "%20", "..", "server%0a"]),
    st.text(max_size=12).map(lambda s: quote(s, safe="")),
    st.binary(max_size=6).map(lambda b: quote(b, safe="")),
)
# mostly real names and versions, so most requests reach the model
SEGMENT = {
    "name": st.one_of(st.just("tiny"), st.just("tiny"), ODD_SEGMENT),
    "version": st.one_of(st.sampled_from(["1", "server", "default"]), ODD_SEGMENT),
}
TEXTS = st.lists(st.text(max_size=40), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, str]:
    """A route's method (or, one time in five, any method) and its path, segments filled in."""
    template, method = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 4)) == 0:
        method = draw(st.one_of(st.sampled_from(METHODS), TOKEN))
    path = re.sub(r"\{(\w+)\}", lambda m: draw(SEGMENT[m.group(1)]), template)
    if draw(st.integers(0, 3)) == 0:
        path += draw(st.sampled_from(["/", "?x=1", "/extra", "//", "%00", "?texts=1&texts=2"]))
    return method, path


def v2_body(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    texts = draw(TEXTS)
    tensor: dict[str, Any] = {"name": "text", "datatype": "BYTES", "shape": [len(texts)]}
    payload: dict[str, Any] = {"inputs": [tensor]}
    headers: dict[str, str] = {}
    binary = b""
    if draw(st.booleans()):
        tensor["data"] = texts
    else:
        binary = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
        tensor["parameters"] = {"binary_data_size": len(binary)}
    if draw(st.booleans()):
        payload["outputs"] = [
            {"name": n}
            for n in draw(st.lists(st.sampled_from(["scores", "label", "x"]), max_size=3))
        ]
    if draw(st.booleans()):
        payload["parameters"] = {"binary_data_output": draw(JSON_VALUES)}
    if draw(st.booleans()):  # break one field
        target = draw(st.sampled_from([payload, tensor]))
        target[draw(st.sampled_from([*sorted(target), "id", "extra"]))] = draw(JSON_VALUES)
    head = json.dumps(payload).encode()
    if binary or draw(st.booleans()):
        length = draw(st.one_of(st.just(str(len(head))), st.integers(-5, 10**6).map(str), TOKEN))
        headers["Inference-Header-Content-Length"] = length
    return head + binary, headers


@st.composite
def bodies(draw: st.DrawFn, path: str) -> tuple[bytes, dict[str, str]]:
    fits = "v1" if path.endswith("/predict") else "v2" if path.endswith("/infer") else "none"
    kind = draw(st.sampled_from([fits, fits, fits, "v1", "v2", "json", "bytes", "none"]))
    if kind == "v1":
        payload: Any = {"texts": draw(TEXTS)}
        if draw(st.booleans()):
            payload[draw(st.sampled_from(["texts", "extra"]))] = draw(JSON_VALUES)
        return json.dumps(payload).encode(), {}
    if kind == "v2":
        return v2_body(draw)
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode(), {}
    if kind == "bytes":
        return draw(st.binary(max_size=2000)), {}
    return b"", {}


HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    method, path = draw(targets())
    body, headers = draw(bodies(path))
    headers.update(draw(st.dictionaries(TOKEN, HEADER_VALUES, max_size=4)))
    for name in list(headers):  # the framing below is the one that counts
        if name.lower() in {"content-length", "transfer-encoding", "connection", "host", "expect"}:
            del headers[name]
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "text/plain", "application/octet-stream"])
        )
    chunked = bool(body) and draw(st.booleans())
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        cut = draw(st.integers(0, len(body)))
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:cut], body[cut:]) if p)
        framed += b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        framed = body
    return method, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + framed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("models")
    build_real_bundle(root, "tiny")
    # short head and body timeouts: a request the fuzzer frames wrong costs 2 s, not 30
    proc = ServerProcess(root, "--header-timeout-s", "2", "--body-timeout-s", "2")
    yield proc
    assert proc.stop() == 0


def test_fuzzed_requests_get_no_5xx_and_every_error_is_json(
    server: ServerProcess, reliability
) -> None:
    statuses: collections.Counter[int] = collections.Counter()
    bad: list[tuple[str, RawResponse]] = []
    t0 = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def one(request: tuple[str, bytes]) -> None:
        method, raw = request
        r = exchange(server.port, raw, timeout_s=5.0, head=method == "HEAD")
        statuses[r.status] += 1
        broken = r.status == 0 or (r.status >= 500 and r.status not in LOAD)
        if 300 <= r.status < 400:  # Starlette's trailing-slash redirect: an answer, not an error
            broken = broken or "location" not in r.headers
        elif not 200 <= r.status < 300 and method != "HEAD" and r.json_error is None:
            broken = True
        if broken:
            bad.append((raw[:300].decode("latin-1"), r))
        assert not broken, (raw[:300], r)

    one()
    elapsed = time.monotonic() - t0
    assert not bad
    assert server.proc.poll() is None
    assert exchange(server.port, b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n").status == 200
    seen = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
    reliability.record(
        "input",
        "hypothesis-made requests from the app's route table: methods, model paths, headers, "
        "v1/v2 bodies valid and mutated, any JSON, random bytes, chunked or not",
        sum(statuses.values()),
        f"no 5xx but load, every non-2xx a JSON error ({seen}; {elapsed:.0f} s)",
    )
