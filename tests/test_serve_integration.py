"""A real server process on 127.0.0.1 over a real (tiny, torch-free) bundle.

Every endpoint, the error paths over real HTTP, a hot swap under a stream of requests with zero
failures, overload answered with 503 while the process stays healthy, graceful shutdown.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.serving import LABELS, ServerProcess, build_real_bundle

from modelyard.runtime import load

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


def test_hot_swap_under_load_fails_no_request(server: ServerProcess, repo: Path) -> None:
    async def main() -> tuple[list[int], set[int]]:
        statuses: list[int] = []
        versions: set[int] = set()
        swapped = asyncio.Event()

        async def stream(c: httpx.AsyncClient) -> None:
            served_after_swap = 0
            while served_after_swap < 20:
                r = await c.post("/v1/models/tiny/predict", json={"texts": ["good film"]})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["version"])
                    if r.json()["version"] == 2:
                        swapped.set()
                if swapped.is_set():
                    served_after_swap += 1

        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            clients = [asyncio.ensure_future(stream(c)) for _ in range(8)]
            await asyncio.sleep(0)  # let the stream start before the new version lands
            await asyncio.get_running_loop().run_in_executor(
                None, build_real_bundle, repo, "tiny", 7
            )
            await asyncio.wait_for(asyncio.gather(*clients), 30)
        return statuses, versions

    statuses, versions = asyncio.run(main())
    assert set(statuses) == {200}
    assert 2 in versions
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v2/models/tiny").json()["versions"] == ["1", "2"]


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

    async def main() -> list[int]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as c:
            assert (await c.get("/v1/models")).status_code == 401
            assert (await c.get("/v2/health/ready")).status_code == 200
            first = await c.post("/v1/models/tiny/predict", json={"texts": ["a"]}, headers=auth)
            assert first.status_code == 200
            calls = [
                asyncio.ensure_future(
                    c.post("/v1/models/tiny/predict", json={"texts": TEXTS}, headers=auth)
                )
                for _ in range(30)
            ]
            await asyncio.sleep(0)
            proc.proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
        # a request that reached the server was answered; none was cut off with a 5xx
        return [r.status_code for r in results if isinstance(r, httpx.Response)]

    codes = asyncio.run(main())
    assert all(code == 200 for code in codes)
    assert proc.proc.wait(20) == 0  # drained and exited by itself
    proc.stop()
