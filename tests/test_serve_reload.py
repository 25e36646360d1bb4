"""The repository under change, in process: aliases followed and rolled back under traffic, a
version replaced within one poll, failed loads retried, a broken model beside healthy ones."""

from __future__ import annotations

import json
import shutil
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from helpers.bundles import TEXTS, make_bundle
from helpers.serving import ToyPredictor, add_toy_version, toy_loader, toy_repo
from starlette.testclient import TestClient

from modelyard.config import ServeConfig
from modelyard.serving import create_app
from modelyard.serving.inference import Loader
from modelyard.versions import set_alias

pytestmark = pytest.mark.unit


def client_for(root: Path, loader: Loader = toy_loader, **settings: object) -> TestClient:
    app = create_app(str(root), ServeConfig(**settings), loader=loader, poll=False)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


def refresh(c: TestClient) -> bool:
    return bool(c.portal.call(c.app.state.server.repo.refresh))  # type: ignore[attr-defined, union-attr]


def version_of(c: TestClient, path: str = "/v1/models/toy/predict") -> int:
    r = c.post(path, json={"texts": ["good film"]})
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def test_serves_the_alias_follows_it_and_rolls_back(tmp_path: Path) -> None:
    root = toy_repo(tmp_path / "m", {"toy": [1, 2, 3]})
    set_alias(root / "toy", "default", 1)
    set_alias(root / "toy", "server", 2)
    with client_for(root) as c:
        assert version_of(c) == 2  # not the newest: the alias the server follows
        meta = c.get("/v2/models/toy").json()
        assert meta["aliases"] == {"default": 1, "server": 2} and meta["served"] == "2"
        assert meta["versions"] == ["1", "2"]  # what an alias names stays loaded
        assert version_of(c, "/v1/models/toy/versions/default/predict") == 1
        req = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
        r = c.post("/v2/models/toy/versions/server/infer", json=req)
        assert r.json()["model_version"] == "2"
        assert c.get("/v2/models/toy/versions/default/ready").status_code == 200
        assert c.get("/v2/models/toy/versions/edge").status_code == 404
        # a new version changes nothing until an alias moves onto it
        add_toy_version(root, "toy", 4)
        refresh(c)
        assert version_of(c) == 2
        set_alias(root / "toy", "server", 4)
        assert refresh(c) is True
        assert version_of(c) == 4
        set_alias(root / "toy", "server", 2)  # rollback: back to an older number
        refresh(c)
        assert version_of(c) == 2
        (entry,) = [m for m in c.get("/v1/models").json()["models"] if m["name"] == "toy"]
        assert entry["served"] == 2 and entry["aliases"] == {"default": 1, "server": 2}
        assert entry["versions"] == [1, 2] and entry["available"] == [1, 2, 3, 4]
    with client_for(root, alias="default") as c:
        assert version_of(c) == 1


def test_alias_moves_under_concurrent_requests_fail_none(tmp_path: Path) -> None:
    root = toy_repo(tmp_path / "m", {"toy": [1, 2]})
    set_alias(root / "toy", "server", 1)
    with client_for(root) as c:
        statuses: list[int] = []
        versions: set[int] = set()
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                r = c.post("/v1/models/toy/predict", json={"texts": ["a b", "c"]})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["version"])

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for move in range(6):  # forward, back, forward, ...
                set_alias(root / "toy", "server", 2 - move % 2)
                refresh(c)
                count = len(statuses)
                deadline = time.monotonic() + 5
                while len(statuses) < count + 8 and time.monotonic() < deadline:
                    stop.wait(0.01)  # let traffic reach the new version
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert statuses and set(statuses) == {200}
        assert versions == {1, 2}


def test_a_lookup_during_unload_goes_to_the_new_version_and_the_old_one_drains(
    tmp_path: Path,
) -> None:
    root = toy_repo(tmp_path / "m", {"toy": [1, 2]})
    set_alias(root / "toy", "server", 1)
    gate = threading.Event()

    def loader(path: Path) -> ToyPredictor:
        return ToyPredictor("toy", int(path.name), gate=gate if path.name == "1" else None)

    with client_for(root, loader) as c:
        held: list[int] = []
        queued = threading.Thread(
            target=lambda: held.append(
                c.post("/v1/models/toy/predict", json={"texts": ["x"]}).status_code
            )
        )
        queued.start()
        repo = c.app.state.server.repo  # type: ignore[attr-defined]
        old = repo.get("toy")
        assert old.version == 1
        deadline = time.monotonic() + 5
        while not old.batcher.busy and time.monotonic() < deadline:
            gate.wait(0.01)  # until the request holds version 1's worker
        assert old.batcher.busy
        set_alias(root / "toy", "server", 2)
        refresh(c)  # version 1 is unloaded while its request is still running
        assert 1 not in repo.models["toy"].versions
        assert version_of(c) == 2  # a lookup now finds the new version, not a 503
        gate.set()
        queued.join(10)
        assert held == [200]  # the draining version answered what it had


def test_a_version_replaced_within_one_poll_is_reloaded(tmp_path: Path) -> None:
    root = tmp_path / "m"
    add_toy_version(root, "toy", 1, '{"created_at": "first"}')
    with client_for(root) as c:
        repo = c.app.state.server.repo  # type: ignore[attr-defined]
        before = repo.get("toy").predictor
        assert refresh(c) is False and repo.get("toy").predictor is before
        shutil.rmtree(root / "toy" / "1")  # deleted and written again before the next poll
        add_toy_version(root, "toy", 1, '{"created_at": "second"}')
        assert refresh(c) is True
        after = repo.get("toy").predictor
        assert after is not before and after.warmed
        assert version_of(c) == 1


def _failing_loader(
    broken: Callable[[Path], bool], tries: list[Path]
) -> Callable[[Path], ToyPredictor]:
    def loader(path: Path) -> ToyPredictor:
        tries.append(path)
        if broken(path):
            raise ValueError(f"corrupt bundle {path.name}")
        return toy_loader(path)

    return loader


def test_a_broken_model_is_a_503_and_is_retried_with_backoff_and_on_change(
    tmp_path: Path,
) -> None:
    root = toy_repo(tmp_path / "m", {"good": [1], "bad": [1]})
    marker = root / "bad" / "1" / "broken"
    marker.write_text("half copied")
    tries: list[Path] = []
    loader = _failing_loader(lambda p: (p / "broken").exists(), tries)
    with client_for(root, loader, poll_s=0.2) as c:
        assert c.get("/v2/health/ready").status_code == 200  # the good model serves
        assert c.post("/v1/models/good/predict", json={"texts": ["a"]}).status_code == 200
        r = c.post("/v1/models/bad/predict", json={"texts": ["a"]})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "bad" in r.json()["error"] and "corrupt bundle 1" in r.json()["error"]
        ready = c.get("/v2/models/bad/ready")
        assert ready.status_code == 503 and "corrupt bundle" in ready.json()["error"]
        (bad,) = [m for m in c.get("/v1/models").json()["models"] if m["name"] == "bad"]
        assert bad["available"] == [] and "1" in bad["failed"] and bad["ready"] is False
        text = c.get("/metrics").text
        assert 'modelyard_model_load_failures_total{model="bad",version="1"} 1.0' in text
        bad_tries = lambda: sum(p.parent.name == "bad" for p in tries)  # noqa: E731
        refresh(c)
        assert bad_tries() == 1  # within its backoff, unchanged files are not tried again
        deadline = time.monotonic() + 5
        while bad_tries() < 2 and time.monotonic() < deadline:
            refresh(c)  # bounded: the backoff (0.2 s) expires
        assert bad_tries() == 2
        marker.unlink()  # repaired: its files changed, so it is tried at once
        refresh(c)
        assert bad_tries() == 3
        assert c.post("/v1/models/bad/predict", json={"texts": ["a"]}).status_code == 200
        assert c.get("/v2/models/bad/ready").status_code == 200


def test_startup_falls_back_to_a_loadable_version_in_one_pass(tmp_path: Path) -> None:
    root = toy_repo(tmp_path / "m", {"toy": [1, 2, 3]})
    tries: list[Path] = []
    with client_for(root, _failing_loader(lambda p: p.name != "1", tries)) as c:
        assert version_of(c) == 1
        assert [p.name for p in tries] == ["3", "2", "1"]
        (entry,) = c.get("/v1/models").json()["models"]
        assert entry["served"] == 1 and entry["wanted"] == 3 and entry["available"] == [1]


def test_only_broken_models_leave_the_server_not_ready(tmp_path: Path) -> None:
    root = toy_repo(tmp_path / "m", {"bad": [1]})
    with client_for(root, _failing_loader(lambda p: True, [])) as c:
        assert c.get("/v2/health/ready").status_code == 503  # nothing at all can answer
        assert c.post("/v1/models/bad/predict", json={"texts": ["a"]}).status_code == 503


def test_v2_label_of_a_multilabel_model_is_its_label_set(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    make_bundle(repo, "multilabel", threshold=0.3)
    app = create_app(str(repo), poll=False)  # the real runtime
    with TestClient(app) as c:
        v1 = c.post("/v1/models/tiny-multilabel/predict", json={"texts": TEXTS}).json()
        want = [p["labels"] for p in v1["predictions"]]
        assert any(len(labels) != 1 for labels in want)  # the set is not the argmax
        req = {
            "inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}],
            "outputs": [{"name": "label"}, {"name": "scores", "parameters": {"binary_data": True}}],
        }
        out = c.post("/v2/models/tiny-multilabel/infer", json=req)
        n = int(out.headers["inference-header-content-length"])
        label = orjson.loads(out.content[:n])["outputs"][0]
        assert [json.loads(x) for x in label["data"]] == want
        req["outputs"] = [{"name": "label", "parameters": {"binary_data": True}}]
        out = c.post("/v2/models/tiny-multilabel/infer", json=req)
        n = int(out.headers["inference-header-content-length"])
        blob, got = out.content[n:], []
        while blob:
            (size,) = struct.unpack_from("<I", blob)
            got.append(json.loads(blob[4 : 4 + size]))
            blob = blob[4 + size :]
        assert got == want


def test_a_copy_in_progress_changes_nothing_until_it_loads(tmp_path: Path) -> None:
    root = toy_repo(tmp_path / "m", {"toy": [1]})
    (root / "toy" / "1" / "model.onnx").write_text("graph")
    (root / "toy" / "2").mkdir()  # `cp -a` has made the directory, no manifest yet
    tries: list[Path] = []
    with client_for(root, _failing_loader(lambda p: not (p / "model.onnx").exists(), tries)) as c:
        assert version_of(c) == 1
        (root / "toy" / "2" / "manifest.json").write_text("{}")  # the manifest arrives first
        refresh(c)
        assert version_of(c) == 1 and [p.name for p in tries][-1] == "2"
        (root / "toy" / "2" / "model.onnx").write_text("graph")  # the copy finishes
        refresh(c)
        assert version_of(c) == 2


def test_an_alias_url_keeps_answering_while_its_new_version_loads(tmp_path: Path) -> None:
    root = toy_repo(tmp_path / "m", {"toy": [1, 2]})
    set_alias(root / "toy", "server", 1)
    loading, release = threading.Event(), threading.Event()

    def loader(path: Path) -> ToyPredictor:
        if path.name == "2":
            loading.set()
            release.wait(10)  # a slow load and warm-up
        return toy_loader(path)

    with client_for(root, loader) as c:
        set_alias(root / "toy", "server", 2)
        repo = c.app.state.server.repo  # type: ignore[attr-defined]
        pending = c.portal.start_task_soon(repo.refresh)  # type: ignore[union-attr]
        assert loading.wait(10)
        assert version_of(c, "/v1/models/toy/versions/server/predict") == 1
        assert version_of(c) == 1
        release.set()
        pending.result(10)
        assert version_of(c, "/v1/models/toy/versions/server/predict") == 2
        assert version_of(c) == 2


def test_a_failed_version_overtaken_then_repaired_is_no_longer_listed_as_failed(
    tmp_path: Path,
) -> None:
    root = toy_repo(tmp_path / "m", {"toy": [1, 2]})
    marker = root / "toy" / "2" / "broken"
    marker.write_text("corrupt")
    tries: list[Path] = []
    with client_for(root, _failing_loader(lambda p: (p / "broken").exists(), tries)) as c:
        assert version_of(c) == 1
        add_toy_version(root, "toy", 3)  # a newer good version takes over
        refresh(c)
        assert version_of(c) == 3
        (entry,) = c.get("/v1/models").json()["models"]
        assert "2" in entry["failed"] and entry["available"] == [1, 3]
        marker.unlink()  # repaired in place: its old error no longer describes it
        refresh(c)
        (entry,) = c.get("/v1/models").json()["models"]
        assert "failed" not in entry and entry["available"] == [1, 2, 3]
        assert [p.name for p in tries].count("2") == 1  # forgotten, not loaded for nothing
        set_alias(root / "toy", "server", 2)  # and it loads once an alias names it
        refresh(c)
        assert version_of(c) == 2
