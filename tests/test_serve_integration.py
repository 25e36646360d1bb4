"""A real server process on 127.0.0.1 over a real (tiny, torch-free) bundle.

Every endpoint, the error paths over real HTTP, alias moves and a rollback under a stream of
requests with zero failures, a slow upload across an unload, a client that leaves mid-body,
overload answered with 503 while the process stays healthy, graceful shutdown, per-process setup
in every worker.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.serving import LABELS, ServerProcess, build_real_bundle

from modelyard.runtime import load
from modelyard.versions import set_alias

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEXTS = ["good film", "awful plot boring", "the actor was fun fun fun", "", "great"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_real_bundle(root, "tiny")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(repo, "--max-texts", "8", "--max-body-bytes", "4096", "--poll-s", "0.1")
    yield proc
    assert proc.stop() == 0


def test_torch_is_not_imported_by_the_server() -> None:
    import subprocess
    import sys

    code = "import sys, modelyard.serving, modelyard.serving.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_endpoint(server: ServerProcess, repo: Path) -> None:
    want = load(repo / "tiny").predict(TEXTS)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2").json()["name"] == "modelyard"
        meta = c.get("/v2/models/tiny").json()
        assert meta["versions"] == ["1"] and meta["outputs"][0]["shape"] == [-1, 3]
        assert c.get("/v2/models/tiny/versions/1").status_code == 200
        assert c.get("/v2/models/tiny/ready").status_code == 200
        assert c.get("/v2/models/tiny/versions/1/ready").status_code == 200
        r = c.post("/v1/models/tiny/predict", json={"texts": TEXTS})
        assert r.status_code == 200
        got = r.json()["predictions"]
        assert [p["label"] for p in got] == [p.label for p in want]
        np.testing.assert_allclose([p["score"] for p in got], [p.score for p in want], atol=1e-6)
        assert c.post("/v1/models/tiny/versions/1/predict", json={"texts": ["x"]}).is_success
        req = {
            "id": "a1",
            "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}],
        }
        body = c.post("/v2/models/tiny/infer", json=req).json()
        assert body["id"] == "a1" and body["model_version"] == "1"
        scores, labels = body["outputs"]
        assert scores["datatype"] == "FP32" and scores["shape"] == [2, 3]
        assert labels["data"] == [p.label for p in want[:2]]
        assert c.post("/v2/models/tiny/versions/1/infer", json=req).is_success
        models = c.get("/v1/models").json()["models"]
        assert models[0]["name"] == "tiny" and models[0]["labels"] == LABELS
        metrics = c.get("/metrics").text
        assert 'modelyard_requests_total{endpoint="predict",model="tiny"' in metrics
        assert "modelyard_batch_size_bucket" in metrics


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/models/tiny/predict", b"{oops", 400),
        ("POST", "/v1/models/tiny/predict", b'{"texts": [1]}', 422),
        (
            "POST",
            "/v1/models/tiny/predict",
            b'{"texts": ["a","a","a","a","a","a","a","a","a"]}',
            413,
        ),
        ("POST", "/v1/models/tiny/predict", b'{"texts": ["' + b"a" * 5000 + b'"]}', 413),
        ("POST", "/v1/models/nope/predict", b'{"texts": ["a"]}', 404),
        ("POST", "/v1/models/tiny/versions/3/predict", b'{"texts": ["a"]}', 404),
        ("POST", "/v1/models/..%2F..%2Fetc%2Fpasswd/predict", b'{"texts": ["a"]}', 404),
        ("POST", "/v2/models/tiny/infer", b'{"inputs": []}', 400),
        ("POST", "/v2/models/tiny/infer", b"[]", 400),
        ("GET", "/v2/models/nope", b"", 404),
        ("GET", "/v2/models/nope/ready", b"", 404),
        ("GET", "/v1/models/tiny/predict", b"", 405),
    ],
)
def test_error_paths_answer_json(
    server: ServerProcess, method: str, path: str, body: bytes, status: int
) -> None:
    r = httpx.request(method, server.url + path, content=body, timeout=10)
    assert r.status_code == status
    assert isinstance(r.json()["error"], str)


def test_answer_does_not_depend_on_batch_mates(server: ServerProcess) -> None:
    async def main() -> tuple[list[float], list[list[float]]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            alone = await c.post("/v1/models/tiny/predict", json={"texts": [TEXTS[2]]})
            crowd = await asyncio.gather(
                *(
                    c.post("/v1/models/tiny/predict", json={"texts": [t, TEXTS[2]]})
                    for t in TEXTS * 6
                )
            )
        ref = list(alone.json()["predictions"][0]["scores"].values())
        return ref, [list(r.json()["predictions"][1]["scores"].values()) for r in crowd]

    ref, others = asyncio.run(main())
    for row in others:
        np.testing.assert_allclose(row, ref, atol=1e-5)


def wait_served(url: str, version: int, unloaded: int | None = None) -> None:
    """Until the server answers from ``version`` (and ``unloaded`` is gone); bounded."""
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=url, timeout=5) as c:
        while time.monotonic() < deadline:
            meta = c.get("/v2/models/tiny").json()
            if meta["served"] == str(version) and str(unloaded) not in meta["versions"]:
                return
            time.sleep(0.05)  # the server polls every 0.1 s
    raise TimeoutError(f"version {version} not served in time")


def test_alias_moves_and_a_rollback_under_load_fail_no_request(
    server: ServerProcess, repo: Path
) -> None:
    new = build_real_bundle(repo, "tiny", 7)
    with httpx.Client(base_url=server.url) as c:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the server has seen the new version
            (tiny,) = c.get("/v1/models").json()["models"]
            if int(new.name) in tiny["available"]:
                break
            time.sleep(0.05)
        assert int(new.name) in tiny["available"]
        assert tiny["served"] == 1  # a new version alone changes nothing

    async def main() -> tuple[list[int], list[int]]:
        statuses: list[int] = []
        versions: list[int] = []
        done = asyncio.Event()

        async def stream(c: httpx.AsyncClient) -> None:
            while not done.is_set():
                r = await c.post("/v1/models/tiny/predict", json={"texts": ["good film"]})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["version"])

        async def seen(version: int) -> None:
            count = versions.count(version)
            while versions.count(version) < count + 20:
                await asyncio.sleep(0.01)

        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            clients = [asyncio.ensure_future(stream(c)) for _ in range(8)]
            for target in (int(new.name), 1, int(new.name), 1):  # forward, rollback, ...
                set_alias(repo / "tiny", "server", target)
                await asyncio.wait_for(seen(target), 30)
            done.set()
            await asyncio.wait_for(asyncio.gather(*clients), 30)
        return statuses, versions

    statuses, versions = asyncio.run(main())
    assert set(statuses) == {200}
    assert set(versions) == {1, int(new.name)}
    with httpx.Client(base_url=server.url) as c:
        meta = c.get("/v2/models/tiny").json()
        assert meta["served"] == "1" and meta["aliases"] == {"default": 1, "server": 1}


def test_a_slow_upload_across_an_unload_is_answered(server: ServerProcess, repo: Path) -> None:
    first, second = build_real_bundle(repo, "tiny", 8), build_real_bundle(repo, "tiny", 9)
    set_alias(repo / "tiny", "server", int(first.name))
    wait_served(server.url, int(first.name))
    body = b'{"texts": ["good film", "the plot"]}'

    async def main() -> httpx.Response:
        sent_half, go_on = asyncio.Event(), asyncio.Event()

        async def upload() -> AsyncIterator[bytes]:
            yield body[:10]
            sent_half.set()
            await go_on.wait()
            yield body[10:]

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            call = asyncio.ensure_future(c.post("/v1/models/tiny/predict", content=upload()))
            await asyncio.wait_for(sent_half.wait(), 10)
            # meanwhile the alias moves on and the version served at the start is unloaded
            set_alias(repo / "tiny", "server", int(second.name))
            await asyncio.get_running_loop().run_in_executor(
                None, wait_served, server.url, int(second.name), int(first.name)
            )
            go_on.set()
            return await asyncio.wait_for(call, 20)

    r = asyncio.run(main())
    assert r.status_code == 200, r.text
    assert r.json()["version"] == int(second.name)
    set_alias(repo / "tiny", "server", 1)
    wait_served(server.url, 1)


def test_a_client_that_leaves_mid_body_is_a_499_not_a_500(server: ServerProcess) -> None:
    head = (
        "POST /v1/models/tiny/predict HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(head.encode() + b'{"texts": ["goo')
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=server.url, timeout=5) as c:
        while time.monotonic() < deadline:
            metrics = c.get("/metrics").text
            if 'status="499"' in metrics:
                break
            time.sleep(0.05)  # the server notices the closed sockets on its own time
    left = re.search(r'modelyard_requests_total\{endpoint="predict",model="",status="499"', metrics)
    assert left is not None
    assert 'status="500"' not in metrics


def test_overload_is_503_with_retry_after_and_the_server_stays_healthy(repo: Path) -> None:
    # one text per batch and room for one waiting request: a burst must overflow
    proc = ServerProcess(repo, "--max-queue", "8", "--max-batch-size", "1")
    try:

        async def main() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(base_url=proc.url, timeout=10, limits=limits) as c:
                for _ in range(10):  # bounded rounds of bursts
                    body = {"texts": ["the actor was fun"] * 8}
                    rs = await asyncio.gather(
                        *(c.post("/v1/models/tiny/predict", json=body) for _ in range(50))
                    )
                    if any(r.status_code == 503 for r in rs):
                        return rs
            return rs

        responses = asyncio.run(main())
        codes = {r.status_code for r in responses}
        assert codes <= {200, 503} and 503 in codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "error" in busy.json()
        with httpx.Client(base_url=proc.url) as c:
            assert c.get("/v2/health/ready").status_code == 200
            assert c.post("/v1/models/tiny/predict", json={"texts": ["ok"]}).status_code == 200
            assert 'status="503"' in c.get("/metrics").text
    finally:
        assert proc.stop() == 0


def test_api_key_and_graceful_shutdown(repo: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("s3cret\n")
    proc = ServerProcess(repo, "--api-key-file", str(keys))
    auth = {"Authorization": "Bearer s3cret"}
    calls = 30

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=calls + 5)
        async with httpx.AsyncClient(base_url=proc.url, timeout=30, limits=limits) as c:
            assert (await c.get("/v1/models")).status_code == 401
            assert (await c.get("/v2/health/ready")).status_code == 200
            first = await c.post("/v1/models/tiny/predict", json={"texts": ["a"]}, headers=auth)
            assert first.status_code == 200
            rest = asyncio.Event()

            async def body() -> AsyncIterator[bytes]:
                yield b'{"texts": ["good film",'
                await rest.wait()
                yield b' "the plot"]}'

            pending = [
                asyncio.ensure_future(
                    c.post("/v1/models/tiny/predict", content=body(), headers=auth)
                )
                for _ in range(calls)
            ]
            # SIGTERM only once the server holds every request (its in-flight gauge says so)
            gauge = 'modelyard_requests_in_flight{endpoint="predict"} ' + f"{calls}.0"
            for _ in range(400):
                if gauge in (await c.get("/metrics", headers=auth)).text:
                    break
                await asyncio.sleep(0.025)
            else:
                raise TimeoutError("the requests never reached the server")
            proc.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)  # the server is shutting down while the bodies arrive
            rest.set()
            results = await asyncio.gather(*pending, return_exceptions=True)
        return [r.status_code if isinstance(r, httpx.Response) else -1 for r in results]

    codes = asyncio.run(main())
    # every request the server held was answered, none cut off
    assert codes == [200] * calls
    assert proc.proc.wait(20) == 0  # drained and exited by itself
    proc.stop()


def _read_until(proc: ServerProcess, pattern: str, count: int, deadline_s: float) -> bytes:
    """The server's output so far, read until ``pattern`` has appeared ``count`` times (bounded:
    the output so far once the deadline passes)."""
    assert proc.proc.stdout is not None
    fd, out = proc.proc.stdout.fileno(), b""
    deadline = time.monotonic() + deadline_s
    while len(re.findall(pattern, out.decode(errors="replace"))) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out


def test_every_worker_process_gets_the_gc_and_signal_setup(repo: Path) -> None:
    proc = ServerProcess(repo, "--workers", "2", "--log-level", "info")
    # /ready answered from one worker; the other may still be starting: SIGTERM once both are up
    # (under load the second one came up after the signal, and the test failed)
    before = _read_until(proc, r"Application startup complete", 2, deadline_s=60)
    proc.proc.send_signal(signal.SIGTERM)
    out, _ = proc.proc.communicate(timeout=30)
    assert proc.proc.returncode == 0
    log = (before + out).decode()
    tuned = set(re.findall(r"process (\d+): gc tuned \(threshold \(20000, 20, 20\)", log))
    clean = set(re.findall(r"process (\d+): SIGTERM, exiting cleanly", log))
    workers = set(re.findall(r"Started server process \[(\d+)\]", log))
    assert len(workers) == 2, log
    assert workers <= tuned and workers <= clean, log


def _requests_counted(metrics: str) -> float:
    # label order differs between the modes: match the labels, not their order
    found = re.findall(r"^modelyard_requests_total\{([^}]*)\} (\S+)$", metrics, flags=re.M)
    wanted = {'endpoint="predict"', 'status="200"'}
    return sum(float(v) for labels, v in found if wanted <= set(labels.split(",")))


def test_metrics_count_the_requests_of_every_worker(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the multiprocess directory is the test's, so it can see which workers wrote values
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    proc = ServerProcess(repo, "--workers", "2")
    n = 60

    async def main() -> list[str]:
        # a fresh connection per request, many at once, so the kernel spreads them over workers
        async def one(text: str) -> int:
            async with httpx.AsyncClient(base_url=proc.url, timeout=20) as client:
                reply = await client.post("/v1/models/tiny/predict", json={"texts": [text]})
                return reply.status_code

        codes = await asyncio.gather(*(one(f"text {i}") for i in range(n)))
        assert codes == [200] * n
        scrapes = []
        for _ in range(6):
            async with httpx.AsyncClient(base_url=proc.url, timeout=20) as client:
                scrapes.append((await client.get("/metrics")).text)
        return scrapes

    try:
        scrapes = asyncio.run(main())
        # counters are written by the worker that answered, in files named after its pid
        answered = {p.stem.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
        assert len(answered) == 2, sorted(answered)
        # whichever worker a scrape reaches, it counts every worker's requests
        assert [_requests_counted(text) for text in scrapes] == [n] * len(scrapes)
        assert all("modelyard_models_loaded 1.0" in text for text in scrapes)
    finally:
        assert proc.stop() == 0
