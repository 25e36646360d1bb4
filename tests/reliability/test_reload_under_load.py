"""Hot reload under traffic, over a real server process on 127.0.0.1.

While client threads send requests without pause to the unversioned route, the repository
changes under the server: 50 version swaps (each new version renamed into place from a staging
directory, old ones deleted, sometimes the served one before its successor is loaded), a
corrupted version that is repaired in place, a non-atomic copy (``cp -a`` order: manifest first,
then a half-written ``model.onnx``), a corrupted version repaired after a newer one took over,
and a writer's staging directory that stays beside the versions all along.

Every answer must be a 200: the server always holds a loaded version, and a newer version that
is broken, or half copied, never takes a request. Each version that was the newest once it was
complete must have been served; a failing version is listed as failed, never as available, and
counted in ``modelyard_model_load_failures_total``.

The repaired and the copied version are left failing long enough that their next retry by
backoff is seconds away (``poll_s`` 0.1 doubles to 3.2 s by the sixth try): served well within
that, they were retried because their files changed, not because the backoff ran out.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.serving import ServerProcess, build_real_bundle

from modelyard.bundle import read_manifest, write_bundle

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

POLL_S = 0.1
SWAPS = 50
CLIENTS = 3
# retries a failing version sees before it is repaired: the next one by backoff is then
# POLL_S * 2**5 = 3.2 s away, so a reload within FILES_CHANGED_S came from the changed files
TRIES_BEFORE_REPAIR = 6
FILES_CHANGED_S = 2.0
STEP_S = 10.0  # bound on any one wait
FAILURES = re.compile(
    r'^modelyard_model_load_failures_total\{model="tiny",version="(\d+)"\} ([0-9.e+]+)$', re.M
)


class Traffic:
    """Client threads posting to ``/v1/models/tiny/predict`` until stopped."""

    def __init__(self, url: str, clients: int = CLIENTS) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.answers = 0
        self.failed: list[str] = []  # every answer that was not a 200, and why
        self.seen: set[int] = set()  # versions that answered
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v1/models/tiny/predict", json={"texts": ["good film"]})
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.answers += 1
                        self.failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self.lock:
                    self.answers += 1
                    if r.status_code == 200:
                        self.seen.add(int(r.json()["version"]))
                    else:
                        self.failed.append(f"{r.status_code}: {r.text[:200]}")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def wait_for(what: str, check: Callable[[], bool], within: float = STEP_S) -> float:
    """Poll ``check`` until true; the seconds it took. Fails the test past ``within``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > within:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(0.02)  # the server polls the directory every POLL_S
    return time.monotonic() - t0


class Repo:
    """The served repository, fed from ``source``, which holds every version already built."""

    def __init__(self, root: Path, source: Path) -> None:
        self.model = root / "tiny"
        self.source = source / "tiny"
        self.model.mkdir(parents=True)

    def place(self, v: int, *, corrupt: bool = False) -> None:
        """Version ``v`` renamed into place whole (as ``write_bundle`` does); ``corrupt``: its
        model.onnx cut to half."""
        staging = self.model / f".tmp-{os.getpid()}-{v}"
        shutil.copytree(self.source / str(v), staging)
        if corrupt:
            onnx = staging / "model.onnx"
            onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
        os.rename(staging, self.model / str(v))

    def repair(self, v: int) -> None:
        """Put the right model.onnx back into version ``v``, atomically, in place."""
        part = self.model / str(v) / ".model.onnx.part"
        shutil.copyfile(self.source / str(v) / "model.onnx", part)
        os.replace(part, self.model / str(v) / "model.onnx")

    def remove(self, v: int) -> None:
        shutil.rmtree(self.model / str(v))


def test_reloads_under_load_fail_no_request(tmp_path: Path, reliability: Any) -> None:
    corrupt, copied, late = SWAPS // 2 + 2, SWAPS // 2 + 3, SWAPS // 2 + 4
    total = SWAPS + 4  # version 1, the swaps, and the three broken ones
    first = build_real_bundle(tmp_path / "source")
    files = {name: first / name for name in ("model.onnx", "tokenizer.json")}
    for _ in range(total - 1):  # versions 2..total: the same model, each its own bundle
        write_bundle(tmp_path / "source", read_manifest(first), files)
    repo = Repo(tmp_path / "models", tmp_path / "source")
    repo.place(1)
    # a live writer's staging directory, complete but for its number: never a version
    staging = repo.model / f".tmp-{os.getpid()}-left"
    shutil.copytree(repo.source / "1", staging)

    server = ServerProcess(tmp_path / "models", "--poll-s", str(POLL_S), "--max-delay-ms", "1")
    traffic = Traffic(server.url)
    probe = httpx.Client(base_url=server.url, timeout=10.0)

    def entry() -> dict[str, Any]:
        (found,) = [m for m in probe.get("/v1/models").json()["models"] if m["name"] == "tiny"]
        return dict(found)

    def failures() -> dict[int, float]:
        return {int(v): float(n) for v, n in FAILURES.findall(probe.get("/metrics").text)}

    def failing(v: int) -> bool:
        return str(v) in entry().get("failed", {})

    def served(v: int) -> bool:
        r = probe.post("/v1/models/tiny/predict", json={"texts": ["fun plot"]})
        return r.status_code == 200 and r.json()["version"] == v

    def wait_served(v: int, within: float = STEP_S) -> float:
        took = wait_for(f"version {v} served", lambda: served(v), within)
        with traffic.lock:
            seen = traffic.seen
        wait_for(f"traffic answered by version {v}", lambda: v in seen)
        return took

    def by_number(v: int) -> int:
        return probe.post(
            f"/v1/models/tiny/versions/{v}/predict", json={"texts": ["a"]}
        ).status_code

    def assert_failing_not_available(v: int, serving: int) -> None:
        now = entry()
        assert str(v) in now["failed"] and v not in now["available"], now
        assert now["served"] == serving and v not in now["versions"], now
        meta = probe.get("/v2/models/tiny").json()
        assert str(v) not in meta["versions"] and str(v) in meta["failed"], meta
        assert by_number(v) == 503  # asking for the broken version by number: it says so

    current, swaps, repair_s = 1, 0, {}
    try:
        wait_served(1)

        def swap(v: int) -> None:
            nonlocal current, swaps
            repo.place(v)
            if v % 2:  # the served version's directory goes before its successor loads
                repo.remove(current)
                wait_served(v)
            else:
                wait_served(v)
                repo.remove(current)
            current, swaps = v, swaps + 1

        for v in range(2, corrupt):
            swap(v)

        # a corrupted version, newest on disk: it fails, the one before it keeps serving
        repo.place(corrupt, corrupt=True)
        wait_for(f"version {corrupt} listed as failed", lambda: failing(corrupt))
        assert_failing_not_available(corrupt, current)
        repo.remove(current)  # even with its directory gone, the loaded version serves on
        wait_for(
            f"{TRIES_BEFORE_REPAIR} tries of version {corrupt}",
            lambda: failures().get(corrupt, 0) >= TRIES_BEFORE_REPAIR,
        )
        assert_failing_not_available(corrupt, current)
        assert entry()["available"] == []
        repo.repair(corrupt)  # in place: served once the server sees its files change
        repair_s["repaired"] = wait_served(corrupt, FILES_CHANGED_S)
        assert by_number(corrupt) == 200 and not failing(corrupt)
        current = corrupt

        # a non-atomic copy: the manifest, then half of model.onnx, then (much later) the rest
        src, dst = repo.source / str(copied), repo.model / str(copied)
        dst.mkdir()
        shutil.copy2(src / "manifest.json", dst / "manifest.json")
        graph = (src / "model.onnx").read_bytes()
        with open(dst / "model.onnx", "wb") as out:
            out.write(graph[: len(graph) // 2])
            out.flush()
            wait_for(f"version {copied} listed as failed", lambda: failing(copied))
            assert_failing_not_available(copied, current)
            wait_for(
                f"{TRIES_BEFORE_REPAIR} tries of version {copied}",
                lambda: failures().get(copied, 0) >= TRIES_BEFORE_REPAIR,
            )
            out.write(graph[len(graph) // 2 :])
        shutil.copystat(src / "model.onnx", dst / "model.onnx")
        shutil.copy2(src / "tokenizer.json", dst / "tokenizer.json")
        shutil.copystat(src, dst)
        repair_s["copied"] = wait_served(copied, FILES_CHANGED_S)
        assert by_number(copied) == 200 and not failing(copied)
        repo.remove(current)
        current = copied

        # corrupted, then overtaken by a good version, then repaired: no longer listed as failed
        repo.place(late, corrupt=True)
        wait_for(f"version {late} listed as failed", lambda: failing(late))
        assert_failing_not_available(late, current)
        swap(late + 1)
        repo.repair(late)
        repair_s["overtaken"] = wait_for(
            f"repaired version {late} no longer listed as failed",
            lambda: not failing(late) and late in entry()["available"],
            FILES_CHANGED_S,
        )
        repo.remove(late)

        for v in range(late + 2, total + 1):
            swap(v)
        assert by_number(current) == 200
        wait_for("the last removal seen", lambda: entry()["available"] == [current])
    finally:
        traffic.stop()
        final, counted = entry(), failures()
        probe.close()
        code = server.stop()

    assert code == 0
    assert traffic.answers > 0 and traffic.failed == [], traffic.failed[:5]
    assert swaps == SWAPS and current == total
    good = set(range(1, total + 1)) - {late}  # each was the newest once complete
    assert good <= traffic.seen, sorted(good - traffic.seen)
    assert final["served"] == total and final["available"] == [total] and "failed" not in final
    assert set(counted) == {corrupt, copied, late}, counted  # no good version ever failed
    assert min(counted[corrupt], counted[copied]) >= TRIES_BEFORE_REPAIR
    assert staging.is_dir()  # a live writer's staging directory is left alone, and never listed
    reliability.record(
        "fault",
        f"hot reload under {CLIENTS} clients: {SWAPS} version swaps, a corrupted version "
        "repaired in place, a non-atomic copy, a version repaired after a newer one took over",
        traffic.answers,
        f"{swaps} swaps, {traffic.answers:,} requests, 0 failed; all {len(good)} good versions "
        f"served; {int(sum(counted.values()))} load failures counted, none listed as available; "
        f"repaired served in {repair_s['repaired']:.2f} s, the copy in {repair_s['copied']:.2f} s",
    )
