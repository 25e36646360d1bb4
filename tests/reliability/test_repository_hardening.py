"""The model repository against an unlucky operator: one model's files fail alone.

An ``aliases.json`` nested 200,000 deep, a FIFO that never answers a read, or a 300 MB file stops
nothing but that model's alias changes; the file is re-read only when it changes; a server with a
FIFO in its repository still exits on SIGTERM; ``modelyard predict`` on such a model is a
one-line error; a served model's file overwritten in place is noticed on the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.serving import ServerProcess, build_real_bundle, toy_loader, toy_repo

from modelyard.serving.repository import ModelRepository
from modelyard.versions import RECORD_FILE, set_alias

pytestmark = [pytest.mark.reliability]

PASS_S = 10.0  # one repository pass may take this long at most, here


def _deep(path: Path) -> None:
    path.write_text("[" * 200_000)


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _huge(path: Path) -> None:
    with path.open("wb") as fh:  # sparse: 300 MB to stat and read, nothing on disk
        fh.truncate(300 * 1024 * 1024)


BROKEN = {"nested 200,000 deep": _deep, "a FIFO": _fifo, "a 300 MB file": _huge}


def _release(path: Path) -> None:
    """Let a reader blocked on the FIFO at ``path`` go (open and close a writer), if any."""
    for _ in range(3):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:  # ENXIO: no reader (left already); anything else: not a FIFO
            if exc.errno != errno.ENXIO:
                return
        time.sleep(0.05)


@contextlib.contextmanager
def _unblocking(path: Path) -> Iterator[None]:
    """Whatever happens, let a reader blocked on the FIFO at ``path`` go."""
    try:
        yield
    finally:
        _release(path)


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_aliases_file_stops_only_its_own_model(
    tmp_path: Path, case: str, reliability, caplog: pytest.LogCaptureFixture
) -> None:
    root = toy_repo(tmp_path / "models", {"a": [1, 2], "b": [1, 2]})
    for name in ("a", "b"):
        set_alias(root / name, "server", 1)
    record = root / "a" / RECORD_FILE

    async def run() -> tuple[float, dict[str, int | None]]:
        repo = ModelRepository(root, loader=toy_loader, alias="server", poll_s=0.05)
        await asyncio.wait_for(repo.refresh(), PASS_S)
        BROKEN[case](record)
        set_alias(root / "b", "server", 2)  # the promote that must be followed
        t0 = time.monotonic()
        try:
            for _ in range(3):  # a broken file stays broken: every pass must get through
                await asyncio.wait_for(repo.refresh(), PASS_S)
            took = (time.monotonic() - t0) / 3
            return took, {n: e.served for n, e in repo.models.items()}
        finally:
            _release(record)  # before the loop ends: an executor thread may be blocked on it
            await asyncio.wait_for(repo.stop(), PASS_S)

    took, served = asyncio.run(run())
    assert served == {"a": 1, "b": 2}  # b's promote followed; a keeps what it served
    errors = [r.getMessage() for r in caplog.records if RECORD_FILE in r.getMessage()]
    assert len(errors) == 1, errors  # said once, not at every poll
    assert "keeping the aliases read before" in errors[0]
    assert took < 1.0, took
    reliability.record(
        "fault",
        f"model a's aliases.json replaced by {case}; model b promoted; 3 repository passes",
        1,
        f"b's promote followed; a kept serving version 1; one line in the log "
        f"({errors[0].split(': ', 1)[-1][:60]}...); {took * 1000:.0f} ms a pass",
    )


def test_a_read_that_never_returns_holds_back_neither_other_models_nor_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reliability, caplog: pytest.LogCaptureFixture
) -> None:
    import modelyard.serving.discovery as discovery

    root = toy_repo(tmp_path / "models", {"a": [1, 2], "b": [1, 2]})
    for name in ("a", "b"):
        set_alias(root / name, "server", 1)
    hang, release = threading.Event(), threading.Event()
    original = discovery.fingerprint

    def hanging(path: Path) -> discovery.Fingerprint:  # model a's files on a hung mount
        if hang.is_set() and path.parent.name == "a":
            release.wait(60)
        return original(path)

    monkeypatch.setattr(discovery, "fingerprint", hanging)
    timeout_s = 0.5

    async def run() -> tuple[list[float], float, dict[str, int | None]]:
        repo = ModelRepository(
            root, loader=toy_loader, alias="server", poll_s=0.05, read_timeout_s=timeout_s
        )
        await asyncio.wait_for(repo.refresh(), PASS_S)
        hang.set()
        set_alias(root / "b", "server", 2)
        passes = []
        for _ in range(3):
            t0 = time.monotonic()
            await asyncio.wait_for(repo.refresh(), PASS_S)
            passes.append(time.monotonic() - t0)
        t0 = time.monotonic()
        await asyncio.wait_for(repo.stop(), PASS_S)
        return passes, time.monotonic() - t0, {n: e.served for n, e in repo.models.items()}

    try:
        passes, stop_s, served = asyncio.run(run())  # returns: nothing waits on the hung read
    finally:
        release.set()
    assert served == {"a": 1, "b": 2}
    assert passes[0] < timeout_s + 1.0 and max(passes[1:]) < 0.5, passes  # no second read
    assert stop_s < 1.0
    hung = [r for r in caplog.records if "took over" in r.getMessage()]
    assert len(hung) == 1, [r.getMessage() for r in caplog.records]
    reliability.record(
        "fault",
        "a read of one model's files that never returns (a hung mount), 3 passes, then stop",
        1,
        f"the first pass gave up on it after {passes[0]:.2f} s (deadline {timeout_s} s), later "
        f"ones in {max(passes[1:]) * 1000:.0f} ms without a second read; the other model's "
        f"promote followed; stop took {stop_s * 1000:.0f} ms; one log line",
    )


def test_aliases_json_is_read_again_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reliability
) -> None:
    import modelyard.serving.discovery as discovery
    import modelyard.versions as versions

    root = toy_repo(tmp_path / "models", {"a": [1, 2]})
    set_alias(root / "a", "default", 1)
    reads: list[Path] = []
    original = versions.read_record

    def counted(model_dir: str | Path) -> versions.ModelRecord:
        reads.append(Path(model_dir))
        return original(model_dir)

    monkeypatch.setattr(versions, "read_record", counted)
    monkeypatch.setattr(discovery, "read_record", counted)

    async def run() -> list[int | None]:
        repo = ModelRepository(root, loader=toy_loader, poll_s=0.05)
        served = []
        try:
            for i in range(10):
                if i == 5:
                    reads.append(Path("-"))  # set_alias's own read is not the scanner's
                    set_alias(root / "a", "default", 2)  # a change: read once more
                await asyncio.wait_for(repo.refresh(), PASS_S)
                served.append(repo.models["a"].served)
        finally:
            await repo.stop()
        return served

    served = asyncio.run(run())
    assert served == [1] * 5 + [2] * 5
    scanner_reads = reads[: reads.index(Path("-"))] + reads[len(reads) - 1 :]
    assert len(reads[: reads.index(Path("-"))]) == 1, reads  # 5 passes, one read
    assert len(reads) - reads.index(Path("-")) - 1 == 2, reads  # set_alias's, then one read
    reliability.record(
        "load",
        "10 repository passes over an unchanged aliases.json, changed once after the 5th",
        10,
        f"read {len(scanner_reads)} times by the scanner (once, then once after the change); "
        "the change followed",
    )


def test_predict_on_a_model_with_a_broken_aliases_file_is_one_line(
    tmp_path: Path, reliability
) -> None:
    root = tmp_path / "models"
    build_real_bundle(root, "tiny")
    _deep(root / "tiny" / RECORD_FILE)
    texts = tmp_path / "in.txt"
    texts.write_text("a fine film\n")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "modelyard", "predict", str(root / "tiny")),
            *("--input", str(texts), "--output", "-", "--no-progress"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and RECORD_FILE in lines[0], proc.stderr[-2000:]
    reliability.record(
        "input",
        "`modelyard predict models/tiny` with tiny's aliases.json nested 200,000 deep",
        1,
        f"one line, no traceback: {lines[0][-90:]}",
    )


def _served(url: str) -> dict[str, object]:
    models = httpx.get(url + "/v1/models", timeout=5).json()["models"]
    return {m["name"]: m for m in models}


def _wait_for(what: str, check, deadline_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)  # the server polls every 0.1 s
    raise AssertionError(f"not within {deadline_s} s: {what}")


def test_a_fifo_in_the_repository_neither_stops_reload_nor_sigterm(
    tmp_path: Path, reliability
) -> None:
    root = tmp_path / "models"
    build_real_bundle(root, "tiny")
    build_real_bundle(root, "other")
    build_real_bundle(root, "other", seed=14)
    set_alias(root / "other", "default", 1)
    record = root / "tiny" / RECORD_FILE
    with _unblocking(record):
        server = ServerProcess(root, "--poll-s", "0.1")
        try:
            _fifo(record)
            time.sleep(0.5)  # a few polls read (or block on) the FIFO
            set_alias(root / "other", "default", 2)
            _wait_for(
                "other's promote followed", lambda: _served(server.url)["other"]["served"] == 2
            )
            assert _served(server.url)["tiny"]["served"] == 1
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(timeout=15)
            took = time.monotonic() - t0
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
            server.stop()
    assert code == 0
    reliability.record(
        "fault",
        "a FIFO in place of one model's aliases.json under a polling server (a hung mount)",
        1,
        f"the other model's promote followed; SIGTERM exited 0 in {took:.2f} s",
    )


def test_a_served_model_file_overwritten_in_place_is_noticed_on_the_next_poll(
    tmp_path: Path, reliability
) -> None:
    root = tmp_path / "models"
    bundle = build_real_bundle(root, "tiny")
    onnx = bundle / "model.onnx"
    original = onnx.read_bytes()
    server = ServerProcess(root, "--poll-s", "0.1")
    try:
        with onnx.open("r+b") as fh:  # in place: same inode, same size, new bytes
            fh.write(b"\0" * 64)
        t0 = time.monotonic()
        _wait_for(
            "the overwrite reported", lambda: "1" in _served(server.url)["tiny"].get("failed", {})
        )
        noticed = time.monotonic() - t0
        tiny = _served(server.url)["tiny"]
        assert "model.onnx" in tiny["failed"]["1"] and "corrupted" in tiny["failed"]["1"], tiny
        assert tiny["served"] == 1  # the copy loaded in memory still answers
        r = httpx.post(server.url + "/v1/models/tiny/predict", json={"texts": ["a"]}, timeout=5)
        assert r.status_code == 200
        onnx.write_bytes(original)  # repaired: the failure is forgotten
        _wait_for("the repair noticed", lambda: "failed" not in _served(server.url)["tiny"])
    finally:
        assert server.stop() == 0
    reliability.record(
        "fault",
        "the served version's model.onnx overwritten in place (same size), then restored",
        1,
        f"reported as failed (corrupted, sha256) {noticed:.2f} s after, at a 0.1 s poll, while "
        "the copy in memory kept answering 200; the restore cleared it",
    )


def test_a_version_whose_manifest_is_nested_deep_fails_alone(
    tmp_path: Path, reliability, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    for seed in (13, 14):
        build_real_bundle(root, "a", seed=seed)
    set_alias(root / "a", "server", 1)

    async def run() -> tuple[int | None, list[int], dict[int, str]]:
        repo = ModelRepository(root, alias="server", poll_s=0.05)  # the real loader: verifies
        try:
            await asyncio.wait_for(repo.refresh(), PASS_S)
            _deep(root / "a" / "2" / "manifest.json")
            set_alias(root / "a", "server", 2)  # asks for the broken one: 1 keeps serving
            await asyncio.wait_for(repo.refresh(), PASS_S)
            entry = repo.models["a"]
            return entry.served, entry.on_disk, {v: f.error for v, f in entry.failed.items()}
        finally:
            await repo.stop()

    served, on_disk, failed = asyncio.run(run())
    assert served == 1 and on_disk == [1, 2], (served, on_disk)
    assert "nested too deep" in failed[2], failed
    reliability.record(
        "fault",
        "a version's manifest.json nested 200,000 deep, the served alias moved onto it",
        1,
        f"that version listed as failed ({failed[2][-60:]}); the version before kept serving",
    )
