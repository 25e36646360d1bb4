"""A soak on a real server process: at capacity, then 3x capacity with a short timeout.

The server (``python -m modelyard.serving`` on 127.0.0.1, the tiny real bundle) answers requests of
long texts with a 0.5 s timeout. Capacity is measured first: the throughput ``R`` of a few
connections, so ``R * timeout`` requests are what it answers within the timeout at once. Then a
run at capacity (half of that in flight: answered in time), then rounds at three times it, where
most requests wait out their timeout. What must hold:

* every answer is JSON; the only statuses are 200, 503 and 504, and every 503/504 has Retry-After;
* no 503 at all while the live demand (connections x texts) is below ``--max-queue``: a request
  that timed out gives its queue places back at once;
* resident memory does not grow with the requests served: nothing of a timed-out request (its
  body, its texts) outlives it. Memory is read after each round. A leak grows it in every round;
  load does not: how many requests the server holds at once (at most one per connection, its
  body and texts) depends on timing, and on a busy machine the rounds after the warm-up may
  reach a higher peak than it did, a step of at most that many requests' bodies, once. So the
  last two rounds may both rise above the earlier rounds' peak by less than
  :data:`LATE_GROWTH_BOUND_MB` (a dip between rounds, or one step in one round, is the
  allocator's; a leak of a timed-out request's body grows it several MB every round), and all
  rounds by less than
  :data:`RSS_GROWTH_BOUND_MB` plus what the connections can hold at once;
* afterwards the server is ready, its queue is empty and a normal request is answered.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from helpers.serving import ServerProcess, build_real_bundle

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

TIMEOUT_S = 0.5
MAX_QUEUE = 4096
TEXTS, CHARS = 16, 5000  # one request: 16 long texts, an 80 kB body
WARMUP_S, CAPACITY_S, FIRST_ROUND_S, ROUND_S, ROUNDS = 1.5, 3.0, 3.0, 5.0, 4
# Growth allowed after the warm-up round. Before the fix a timed-out request's body and texts
# lived on in a reference cycle until a rare full collection: 17-28 MB over 18 s here (6-9 MB a
# round), against 0.3-3 MB since on an idle machine and up to 15 MB on a busy one, all of it in
# the first rounds (a higher peak of requests held at once), none in the last ones.
RSS_GROWTH_BOUND_MB = 10.0  # plus the bodies and texts the connections can hold at once
LATE_GROWTH_BOUND_MB = 4.0  # over the last two rounds (10 s of 3x load)
MAX_CONNECTIONS = MAX_QUEUE // TEXTS // 2  # live demand stays at most half the queue
DROPPED_BOUND = 3  # connections closed unanswered by uvicorn's keep-alive race, in all


@dataclass
class Tally:
    """What a load phase got back."""

    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    dropped: int = 0  # connections closed without an answer
    problems_dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok_per_s(self) -> float:
        return self.statuses[200] / self.seconds


def _check(response: httpx.Response, tally: Tally) -> None:
    tally.statuses[response.status_code] += 1
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        tally.problems.append(f"{status}: not JSON: {response.text[:80]!r}")
        return
    if status == 200:
        if len(body.get("predictions", [])) != TEXTS:
            tally.problems.append(f"200 with {len(body.get('predictions', []))} predictions")
    elif status in (503, 504):
        if "retry-after" not in response.headers or "error" not in body:
            tally.problems.append(f"{status} without Retry-After or error: {body}")
    else:
        tally.problems.append(f"unexpected {status}: {body}")


async def _load(url: str, body: bytes, connections: int, seconds: float) -> Tally:
    """``connections`` clients, each sending the next request as soon as it has an answer."""
    tally = Tally()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"}

    async def client(http: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            try:
                _check(await http.post(url, content=body, headers=headers), tally)
            except httpx.TransportError:
                # uvicorn now and then leaves a request on a reused keep-alive connection unread
                # until its keep-alive timer closes the connection (Kludex/uvicorn#2097): counted,
                # bounded below, not the app's answer; what each was, for the failure message
                tally.dropped += 1
                tally.problems_dropped.append(repr(sys.exc_info()[1])[:160])

    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:
        t0 = time.monotonic()
        await asyncio.gather(*(client(http, t0 + seconds) for _ in range(connections)))
        tally.seconds = time.monotonic() - t0
    return tally


def _rss_mb(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / 2**20


def test_soak_at_capacity_then_three_times_it_holds_memory_and_answers(
    tmp_path: Path, reliability
) -> None:
    repo = tmp_path / "models"
    build_real_bundle(repo)
    text = " ".join(["good film great plot awful actor"] * (CHARS // 33 + 1))[:CHARS]
    body = ('{"texts": [' + ", ".join([f'"{text}"'] * TEXTS) + "]}").encode()
    server = ServerProcess(repo, "--timeout-s", str(TIMEOUT_S), "--max-queue", str(MAX_QUEUE))
    try:
        url = server.url + "/v1/models/tiny/predict"
        proc = psutil.Process(server.proc.pid)

        warm = asyncio.run(_load(url, body, 4, WARMUP_S))
        assert warm.statuses[200] > 0 and not warm.problems, (warm.statuses, warm.problems[:5])
        # requests answered within the timeout at once; half of that is "at capacity" (the
        # worker never idles, answers come in time), measured again there (batches fill better)
        at_capacity = max(2, round(warm.ok_per_s * TIMEOUT_S / 2))
        capacity = asyncio.run(_load(url, body, at_capacity, CAPACITY_S))
        assert not capacity.problems, capacity.problems[:5]
        assert capacity.statuses[200] >= 0.8 * capacity.total, capacity.statuses
        in_time = max(warm.ok_per_s, capacity.ok_per_s) * TIMEOUT_S
        overload = min(MAX_CONNECTIONS, max(6, math.ceil(3 * in_time)))

        first = asyncio.run(_load(url, body, overload, FIRST_ROUND_S))  # warm-up of the overload
        rss_base = _rss_mb(proc)
        rounds = [first]
        rss = []
        for _ in range(ROUNDS):
            rounds.append(asyncio.run(_load(url, body, overload, ROUND_S)))
            rss.append(_rss_mb(proc))
        growth = max(rss) - rss_base
        # both of the last two rounds past every earlier round's peak: a leak goes on growing
        # round after round, while the allocator's give-and-take moves RSS a few MB either
        # way, and a new arena is one step in one round (a dip, then a round back at the peak,
        # or a single step, is not a leak)
        late = min(rss[-2:]) - max(rss[:-2])
        held_mb = overload * 2 * len(body) / 2**20  # a body and its texts per connection
        statuses = sum((r.statuses for r in rounds), Counter())
        problems = [p for r in rounds for p in r.problems]
        assert not problems, problems[:5]
        dropped = sum(r.dropped for r in [warm, capacity, *rounds])
        why = [p for r in [warm, capacity, *rounds] for p in r.problems_dropped]
        assert dropped <= DROPPED_BOUND, (dropped, why[:5])
        assert statuses[504] > 0, statuses  # it was overloaded: requests timed out
        # live demand (overload x TEXTS) is below --max-queue: only timed-out requests' places
        # could have filled it, and those are given back at once
        assert statuses[503] == 0, statuses
        assert late < LATE_GROWTH_BOUND_MB, (rss_base, rss, statuses)  # a leak goes on
        assert growth < RSS_GROWTH_BOUND_MB + held_mb, (rss_base, rss, held_mb, statuses)

        with httpx.Client(timeout=10.0) as http:
            ready = http.get(server.url + "/v2/health/ready")
            assert ready.status_code == 200 and ready.json() == {"ready": True}
            normal = http.post(url, json={"texts": ["a good film"]})
            assert normal.status_code == 200 and len(normal.json()["predictions"]) == 1
            metrics = http.get(server.url + "/metrics").text
            assert 'modelyard_queue_depth{model="tiny"} 0.0' in metrics
    finally:
        code = server.stop()
    assert code == 0

    total = warm.total + capacity.total + statuses.total()
    reliability.record(
        "load",
        f"a real server, long texts ({TEXTS} x {CHARS} chars), {TIMEOUT_S:g} s timeout: "
        f"{at_capacity} connections (capacity), then {1 + ROUNDS} rounds of {overload} (3x)",
        total,
        f"all JSON; at capacity {capacity.statuses[200]}/{capacity.total} answered; under 3x "
        f"{statuses[200]} answered, {statuses[504]} 504 with Retry-After, no 503 below the "
        f"queue bound, no other status ({dropped} connections dropped); RSS {rss_base:.0f} MB "
        f"after warm-up, +{growth:.1f} MB over {ROUNDS} rounds (bound {RSS_GROWTH_BOUND_MB:g} "
        f"+ {held_mb:.0f} the connections can hold), +{late:.1f} MB over the last two (bound "
        f"{LATE_GROWTH_BOUND_MB:g}: a leak grows every round); ready and answering after",
    )
