"""The generative server under abuse: overload, streams cut mid-way, fuzzed OpenAI bodies.

One ``modelyard serve`` process on 127.0.0.1 serves a GGUF bundle of the tiny random llama
(``tests/helpers/tiny_llm.py``, 4,096 positions, F16), llama.cpp on one thread with
:data:`SLOTS` slots and :data:`QUEUE` requests waiting at most. The random model rarely ends an
answer by itself, so a stream lasts as long as its ``max_tokens`` asks (about 0.3 ms a token
here, seconds for :data:`LONG` tokens). What must hold:

* **overload** (3x what the server admits: slots + queue): the requests past it are answered 503
  with ``Retry-After`` at once, in OpenAI's error shape; no other 5xx; every admitted stream ends
  in ``data: [DONE]``; resident memory and threads are flat from the second round on;
* **streams cut mid-way** (100, each closed after a few chunks of a long answer): afterwards
  ``vllm:num_requests_running`` and ``..._waiting`` on ``/metrics`` are back to 0 within
  :data:`FREED_WITHIN_S`, a new request answers promptly, and memory and threads did not grow.
  A cut stream whose slot kept decoding would hold it for seconds, so the 100 cuts would queue
  behind each other and the test would time out;
* **fuzzed bodies** (malformed JSON, wrong types, huge values, unknown fields, bad messages) on
  ``/v1/chat/completions`` and ``/v1/completions``: no 5xx, and every error is OpenAI's
  ``{"error": {"message": str, "type": str, ...}}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from helpers.serving import ServerProcess

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

NAME = "tiny-llm"
SLOTS, QUEUE = 2, 2
# the serving flags for a generative bundle: llama.cpp's parallel slots and threads, and how many
# requests may wait for a slot before the server answers 503
SERVE_ARGS = [
    "--generation-slots",
    str(SLOTS),
    "--generation-max-waiting",
    str(QUEUE),
    "--generation-threads",
    "1",
]
POSITIONS = 4096  # the tiny llama's context: room for long answers
LONG = 3000  # tokens: a stream that holds its slot for about a second
FREED_WITHIN_S = 5.0
RSS_GROWTH_BOUND_MB = 25.0  # llama.cpp's buffers are allocated at load; a leak grows per request
# threads the server may start lazily under load and keep: asyncio's default executor grows to
# min(32, cores + 4) workers as it is used, the slots' pool to SLOTS (here 19 -> 26 threads over
# the first 4 rounds, then flat for 8 more rounds and 150 cut streams); a leak grows with the
# requests instead (48 in the overload, 100 cut)
THREAD_GROWTH_BOUND = min(32, (os.cpu_count() or 1) + 4) + SLOTS
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def llm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding the tiny random llama as a GGUF bundle (untrained: fast)."""
    from helpers.tiny_llm import tiny_gguf_bundle, tiny_llama_dir, tiny_tokenizer

    root = tmp_path_factory.mktemp("llm")
    model_dir = tiny_llama_dir(root / "hf", tiny_tokenizer(), positions=POSITIONS)
    tiny_gguf_bundle(root / "models", model_dir, quantization="f16", name=NAME)
    return root / "models"


@pytest.fixture(scope="module")
def llm_server(llm_repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(llm_repo, *SERVE_ARGS, deadline_s=60.0)
    yield proc
    assert proc.stop() == 0


def chat_body(max_tokens: int, stream: bool = False, text: str = "What is a cat?") -> dict:
    return {
        "model": NAME,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


def openai_error(response: httpx.Response) -> str | None:
    """What is wrong with ``response`` as an OpenAI error (None: it is one)."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {response.headers.get('content-type')!r}"
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:80]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"no error object: {str(body)[:120]}"
    if not isinstance(error.get("message"), str) or not isinstance(error.get("type"), str):
        return f"error without message/type: {str(error)[:120]}"
    return None


def usage(proc: psutil.Process) -> tuple[float, int]:
    """Resident MB and threads of the server."""
    return proc.memory_info().rss / 2**20, proc.num_threads()


def metric(url: str, name: str) -> float:
    """The sum of a Prometheus gauge's samples on ``/metrics``."""
    text = httpx.get(url + "/metrics", timeout=5.0).text
    samples = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})?\s+(\S+)$", text, re.M)
    assert samples, f"{name} not on /metrics"
    return sum(float(s) for s in samples)


# ----------------------------------------------------------------------------- the client
async def stream(
    http: httpx.AsyncClient, url: str, body: dict, cut_after: int | None = None
) -> tuple[int, str]:
    """One streamed request: (status, what happened): ``done``, ``cut``, or a problem."""
    async with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            if response.status_code == 503 and "retry-after" not in response.headers:
                return 503, "503 without Retry-After"
            problem = openai_error(response)
            return response.status_code, problem or "error"
        chunks = 0
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return 200, "done"
            event = json.loads(data)
            if "error" in event:
                return 200, f"error event: {str(event)[:120]}"
            chunks += 1
            if cut_after is not None and chunks >= cut_after:
                return 200, "cut"  # leaving the block closes the connection mid-stream
        return 200, "no [DONE]"


# ---------------------------------------------------------------------------------- overload
async def overload_round(url: str, streams: int) -> Counter[tuple[int, str]]:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:
        t0 = time.monotonic()

        async def one() -> tuple[int, str]:
            status, what = await stream(http, url + CHAT, chat_body(LONG // 3, stream=True))
            if status == 503 and time.monotonic() - t0 > 2.0:
                return 503, "503 not at once"
            return status, what

        return Counter(await asyncio.gather(*(one() for _ in range(streams))))


def test_three_times_overload_is_503_with_retry_after_and_memory_stays_flat(
    llm_server: ServerProcess, reliability
) -> None:
    streams = 3 * (SLOTS + QUEUE)
    proc = psutil.Process(llm_server.proc.pid)
    rounds: list[Counter[tuple[int, str]]] = []
    seen: list[tuple[float, int]] = []
    for _ in range(4):  # the first round warms up; memory is compared from the second on
        rounds.append(asyncio.run(overload_round(llm_server.url, streams)))
        seen.append(usage(proc))
    total: Counter[tuple[int, str]] = sum(rounds, Counter())
    problems = {k: n for k, n in total.items() if k not in {(200, "done"), (503, "error")}}
    assert not problems, total
    for counts in rounds:
        assert counts[(503, "error")] >= 1, counts  # more than it admits: some refused
        assert counts[(200, "done")] >= SLOTS, counts  # and the admitted ones answered
    rss_growth = seen[-1][0] - seen[1][0]
    threads_growth = seen[-1][1] - seen[1][1]
    assert rss_growth < RSS_GROWTH_BOUND_MB, seen
    assert threads_growth <= THREAD_GROWTH_BOUND, seen
    after = httpx.post(llm_server.url + CHAT, json=chat_body(4), timeout=10.0)
    assert after.status_code == 200, after.text
    reliability.record(
        "load",
        f"generative server ({SLOTS} slots + {QUEUE} queued): {streams} concurrent streamed "
        "chats, 3x what it admits, 4 rounds",
        sum(total.values()),
        f"{total[(200, 'done')]} streams to [DONE], {total[(503, 'error')]} × 503 at once with "
        f"Retry-After in OpenAI's error shape, 0 × other 5xx; RSS {rss_growth:+.1f} MB and "
        f"threads {threads_growth:+d} over the last 3 rounds",
    )


# ------------------------------------------------------------------------- cut mid-stream
async def cut_streams(url: str, count: int, concurrency: int) -> Counter[tuple[int, str]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    results: Counter[tuple[int, str]] = Counter()
    left = list(range(count))
    async with httpx.AsyncClient(limits=limits, timeout=15.0) as http:

        async def worker() -> None:
            while left:
                left.pop()
                body = chat_body(LONG, stream=True, text="Tell me a long story.")
                results[await stream(http, url + CHAT, body, cut_after=3)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def wait_idle(url: str, within_s: float) -> float:
    """Seconds until no request is running or waiting (bounded by ``within_s``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        busy = metric(url, "vllm:num_requests_running") + metric(url, "vllm:num_requests_waiting")
        if busy == 0:
            return time.monotonic() - t0
        time.sleep(0.05)  # polling the gauge, bounded by within_s
    raise AssertionError(f"requests still running {within_s:g} s after their clients left")


def test_streams_cut_mid_way_free_their_slots_at_once(
    llm_server: ServerProcess, reliability
) -> None:
    url = llm_server.url
    proc = psutil.Process(llm_server.proc.pid)
    warm = asyncio.run(cut_streams(url, 10, SLOTS))
    assert warm == Counter({(200, "cut"): 10}), warm
    wait_idle(url, FREED_WITHIN_S)
    before = usage(proc)
    t0 = time.monotonic()
    results = asyncio.run(cut_streams(url, 100, SLOTS))
    elapsed = time.monotonic() - t0
    # each stream was admitted (never more in flight than slots) and cut after 3 chunks
    assert results == Counter({(200, "cut"): 100}), results
    freed_s = wait_idle(url, FREED_WITHIN_S)
    t1 = time.monotonic()
    after = httpx.post(url + CHAT, json=chat_body(8), timeout=10.0)
    answer_s = time.monotonic() - t1
    assert after.status_code == 200, after.text
    assert answer_s < 2.0, answer_s
    rss, threads = usage(proc)
    assert rss - before[0] < RSS_GROWTH_BOUND_MB, (before, (rss, threads))
    assert threads - before[1] <= THREAD_GROWTH_BOUND, (before, (rss, threads))
    reliability.record(
        "fault",
        f"100 streamed chats of a {LONG}-token answer, each connection closed after 3 chunks "
        f"({SLOTS} at a time)",
        100,
        f"all slots free {freed_s:.2f} s after the last cut (vllm:num_requests_running 0), "
        f"the 100 took {elapsed:.1f} s, a new request answered in {answer_s:.2f} s; RSS "
        f"{rss - before[0]:+.1f} MB, threads {threads - before[1]:+d}",
    )


# ------------------------------------------------------------------------------ fuzzed bodies
HUGE = [10**12, 2**63, -(2**63), 1e308, float("inf")]
ODD = [None, True, -1, 0, 1.5, "8", "", [], {}, [1, 2], {"a": 1}, "x" * 10_000, *HUGE]
CHAT_FIELDS = [
    "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "logprobs", "top_logprobs",
    "n", "response_format", "stream_options", "messages", "model", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "tools", "max_completion_tokens",
]  # fmt: skip
BAD_MESSAGES: list[Any] = [
    [],
    "hello",
    [None],
    ["hello"],
    [{}],
    [{"role": "user"}],
    [{"content": "hi"}],
    [{"role": "wizard", "content": "hi"}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": ["a", "b"]}],
    [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "user", "content": "\x00\x01" * 50}],
    [{"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "x" * 200_000}],  # far past the context
    [{"role": "user", "content": "hi", "name": 7, "extra": [1]}],
]


def fuzz_cases(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """(path, body): malformed JSON, wrong types, huge values, unknown fields, bad messages."""
    rng = random.Random(seed)
    raw = [b"", b"{", b"[]", b"null", b"42", b'"text"', b"{'a': 1}", b'{"messages": [}',
           b"\xff\xfe\x00", b'{"messages": "\xff"}', json.dumps([chat_body(4)]).encode(),
           b'{"a": ' * 2000 + b"1" + b"}" * 2000]  # fmt: skip
    for path in (CHAT, COMPLETIONS):
        for body in raw:
            yield path, body
    for messages in BAD_MESSAGES:
        yield CHAT, json.dumps({**chat_body(4), "messages": messages}).encode()
    while count > 0:
        count -= 1
        path = rng.choice([CHAT, CHAT, COMPLETIONS])
        if path == CHAT:
            body: dict[str, Any] = chat_body(4)
        else:
            body = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 4}
        for _ in range(rng.randint(1, 3)):
            key = rng.choice([*CHAT_FIELDS, "prompt", "suffix", "echo", "best_of", "zzz"])
            if rng.random() < 0.15:
                body.pop(key, None)
            elif key == "messages" and rng.random() < 0.5:
                body[key] = rng.choice(BAD_MESSAGES)
            elif key == "prompt" and rng.random() < 0.5:
                body[key] = rng.choice([[1, 2, 3], [[1, 2], [3]], [10**9], ["a", "b"], [-1]])
            else:
                body[key] = rng.choice(ODD)
        try:
            text = json.dumps(body, allow_nan=True)
        except ValueError:
            continue
        yield path, text.encode()


def test_fuzzed_openai_bodies_get_no_5xx_and_openai_errors(
    llm_server: ServerProcess, reliability
) -> None:
    statuses: Counter[int] = Counter()
    bad: list[str] = []
    t0 = time.monotonic()
    cases = 0
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=15.0) as http:
        for path, body in fuzz_cases(seed=23, count=250):
            cases += 1
            r = http.post(llm_server.url + path, content=body, headers=headers)
            statuses[r.status_code] += 1
            problem = None
            if r.status_code >= 500 and r.status_code != 503:
                problem = f"{r.status_code}: {r.text[:200]}"
            elif r.status_code >= 400:
                problem = openai_error(r)
                if r.status_code == 503 and "retry-after" not in r.headers:
                    problem = "503 without Retry-After"
            elif r.headers.get("content-type", "").startswith(
                "text/event-stream"
            ) and not r.text.rstrip().endswith("data: [DONE]"):
                problem = f"stream without [DONE]: {r.text[-200:]!r}"
            if problem:
                bad.append(f"{path} {body[:160]!r} -> {problem}")
    elapsed = time.monotonic() - t0
    assert not bad, "\n".join(bad[:20])
    assert llm_server.proc.poll() is None
    assert httpx.post(llm_server.url + CHAT, json=chat_body(4), timeout=10.0).status_code == 200
    seen = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
    reliability.record(
        "input",
        "OpenAI bodies on /v1/chat/completions and /v1/completions: malformed JSON, wrong "
        "types, huge values, unknown fields, bad messages (seeded)",
        cases,
        f"no 5xx, every error OpenAI's {{error: {{message, type}}}} ({seen}; {elapsed:.0f} s)",
    )
