"""The routes in process (Starlette TestClient) over toy predictors: every endpoint and error."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers.serving import LABELS, ToyPredictor, add_toy_version, toy_loader, toy_repo
from starlette.testclient import TestClient

from modelyard.config import ServeConfig
from modelyard.errors import ConfigError
from modelyard.serving import create_app
from modelyard.serving.protocol import Limits, ProtocolError, parse_infer

pytestmark = pytest.mark.unit


def make_client(repo: Path, **settings: object) -> TestClient:
    app = create_app(str(repo), ServeConfig(**settings), loader=toy_loader, poll=False)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return toy_repo(tmp_path / "models", {"toy": [1, 2], "other": [3]})


@pytest.fixture
def client(repo: Path) -> Iterator[TestClient]:
    with make_client(repo, max_texts=4, max_text_chars=50, max_body_bytes=2000) as c:
        yield c


def expected(texts: list[str], version: int) -> list[dict[str, object]]:
    predictor = ToyPredictor("toy", version)
    return [p.to_dict() for p in predictor.predict(texts)]


# ------------------------------------------------------------------------------------ v1
def test_predict_latest_and_explicit_version(client: TestClient) -> None:
    r = client.post("/v1/models/toy/predict", json={"texts": ["good film", "bad"]})
    assert r.status_code == 200
    body = r.json()
    assert (body["model"], body["version"]) == ("toy", 2)
    assert body["predictions"] == expected(["good film", "bad"], 2)
    r = client.post("/v1/models/toy/versions/2/predict", json={"texts": ["x"]})
    assert r.json()["version"] == 2


def test_list_models(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert [(m["name"], m["served"], m["versions"]) for m in models] == [
        ("other", 3, [3]),
        ("toy", 2, [2]),
    ]
    assert models[1]["labels"] == LABELS and models[1]["available"] == [1, 2]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 422),
        (b'{"texts": "one"}', 422),
        (b'{"texts": [1]}', 422),
        (b'{"texts": ["a"], "extra": 1}', 422),
        (b'{"texts": ["a", "b", "c", "d", "e"]}', 413),
        (orjson.dumps({"texts": ["x" * 51]}), 422),
        (orjson.dumps({"texts": ["x" * 45] * 45}), 413),  # body over 2000 bytes
    ],
)
def test_predict_client_errors_are_json(client: TestClient, body: bytes, status: int) -> None:
    r = client.post(
        "/v1/models/toy/predict", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    assert isinstance(r.json()["error"], str)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/models/nope/predict", 404),
        ("/v1/models/toy/versions/9/predict", 404),
        ("/v1/models/toy/versions/abc/predict", 404),  # an alias the model does not have
        ("/v1/models/toy/versions/0/predict", 400),
        ("/v1/models/toy/versions/-1/predict", 400),
        ("/v1/models/toy/versions/%D9%A8/predict", 400),  # an Arabic-Indic 8 is not version 8
        ("/v1/models/toy/versions/2%0A/predict", 400),  # "2\n" is not version 2
        ("/v1/models/..%2F..%2Fetc/predict", 404),
        ("/v1/nothing-here", 404),
    ],
)
def test_unknown_model_version_or_route(client: TestClient, path: str, status: int) -> None:
    r = client.post(path, json={"texts": ["a"]})
    assert r.status_code == status
    assert "error" in r.json()


def test_wrong_method_is_a_json_405(client: TestClient) -> None:
    r = client.get("/v1/models/toy/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_empty_texts_give_empty_predictions(client: TestClient) -> None:
    assert client.post("/v1/models/toy/predict", json={"texts": []}).json()["predictions"] == []


# ------------------------------------------------------------------------------------ v2
def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "modelyard" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready(client: TestClient) -> None:
    meta = client.get("/v2/models/toy").json()
    assert meta["name"] == "toy" and meta["versions"] == ["2"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    assert client.get("/v2/models/toy/versions/2").status_code == 200
    assert client.get("/v2/models/toy/ready").json() == {"name": "toy", "ready": True}
    assert client.get("/v2/models/toy/versions/2/ready").status_code == 200
    assert client.get("/v2/models/toy/versions/1/ready").status_code == 404
    assert client.get("/v2/models/nope").status_code == 404


def test_infer_json(client: TestClient) -> None:
    req = {
        "id": "req-7",
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good", "a b"]}],
    }
    r = client.post("/v2/models/toy/infer", json=req)
    assert r.status_code == 200
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("toy", "2", "req-7")
    scores, labels = body["outputs"]
    assert scores["name"] == "scores" and scores["datatype"] == "FP32"
    assert scores["shape"] == [2, 3] and len(scores["data"]) == 6
    want = ToyPredictor("toy", 2).infer(ToyPredictor().encode(["good", "a b"]))
    np.testing.assert_allclose(np.array(scores["data"]).reshape(2, 3), want, atol=1e-6)
    assert labels == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [2],
        "data": [LABELS[int(i)] for i in want.argmax(1)],
    }


def test_infer_nested_data_selected_output_and_version(client: TestClient) -> None:
    req = {
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}],
        "outputs": [{"name": "label"}],
    }
    body = client.post("/v2/models/toy/versions/2/infer", json=req).json()
    assert [o["name"] for o in body["outputs"]] == ["label"]
    assert "id" not in body


def test_infer_binary_tensor_data_both_ways(client: TestClient) -> None:
    texts = [b"good film", "caf\u00e9".encode()]
    blob = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    )
    r = client.post(
        "/v2/models/toy/infer",
        content=header + blob,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert r.status_code == 200
    n = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:n])
    size = head["outputs"][0]["parameters"]["binary_data_size"]
    scores = np.frombuffer(r.content[n : n + size], dtype="<f4").reshape(2, 3)
    want = ToyPredictor("toy", 2).infer(ToyPredictor().encode(["good film", "caf\u00e9"]))
    np.testing.assert_allclose(scores, want, atol=1e-6)
    assert len(head["outputs"][1]["data"]) == 2


@pytest.mark.parametrize(
    "req",
    [
        {"inputs": []},
        {"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
        {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
        {"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]},
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]},
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]},
        {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
            "outputs": [{"name": "nope"}],
        },
        {"id": 5, "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
    ],
)
def test_infer_bad_requests_are_400(client: TestClient, req: dict[str, object]) -> None:
    r = client.post("/v2/models/toy/infer", json=req)
    assert r.status_code == 400
    assert isinstance(r.json()["error"], str)


def test_infer_malformed_binary_is_400() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 10},
                }
            ]
        }
    )
    with pytest.raises(ProtocolError) as err:
        parse_infer(
            header + struct.pack("<I", 99) + b"abcdef",
            Limits(),
            header_length=str(len(header)),
            outputs=["scores"],
        )
    assert err.value.status == 400


# ----------------------------------------------------------------------- metrics & auth
def test_metrics_count_requests_by_model_version_status(client: TestClient) -> None:
    client.post("/v1/models/toy/predict", json={"texts": ["a", "b"]})
    client.post("/v1/models/nope/predict", json={"texts": ["a"]})
    text = client.get("/metrics").text
    assert (
        'modelyard_requests_total{endpoint="predict",model="toy",status="200",version="2"} 1.0'
        in text
    )
    assert 'model="",status="404"' in text  # unknown names do not become label values
    for name in (
        "modelyard_request_latency_seconds_bucket",
        "modelyard_queue_time_seconds_bucket",
        "modelyard_inference_time_seconds_bucket",
        "modelyard_batch_size_bucket",
        'modelyard_queue_depth{model="toy"} 0.0',
        "modelyard_models_loaded 2.0",
    ):
        assert name in text


def test_api_keys(repo: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ops\nsecret-one\n\nsecret-two\n")
    with make_client(repo, api_key_file=str(keys)) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        r = c.get("/v1/models")
        assert r.status_code == 401 and "error" in r.json()
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Basic secret-one"}).status_code == 401
        for key in ("secret-one", "secret-two"):
            assert (
                c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
            )


def test_missing_or_empty_key_file_is_a_config_error(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        create_app(str(repo), ServeConfig(api_key_file=str(tmp_path / "none")))
    (tmp_path / "empty").write_text("\n# nothing\n")
    with pytest.raises(ConfigError):
        create_app(str(repo), ServeConfig(api_key_file=str(tmp_path / "empty")))


# ---------------------------------------------------------------------- overload & failures
def test_full_queue_is_503_with_retry_after_and_timeout_is_504(tmp_path: Path) -> None:
    gate = threading.Event()
    root = toy_repo(tmp_path / "m", {"slow": [1]})
    app = create_app(
        str(root),
        # long enough that the probe below meets the queued requests still waiting: a request
        # that timed out gives its places back at once, so the queue would be free again
        ServeConfig(max_queue=2, timeout_s=2.0),
        loader=lambda p: ToyPredictor("slow", 1, gate=gate),
        poll=False,
    )
    with TestClient(app) as c:
        results: list[int] = []

        def call() -> None:
            results.append(c.post("/v1/models/slow/predict", json={"texts": ["a"]}).status_code)

        (entry,) = app.state.server.repo.models.values()
        (batcher,) = (mv.batcher for mv in entry.versions.values())

        def start(n: int, until: Callable[[], bool]) -> list[threading.Thread]:
            started = [threading.Thread(target=call) for _ in range(n)]
            for t in started:
                t.start()
            deadline = time.monotonic() + 5
            while not until() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert until()
            return started

        # two batches held in flight (the one running and the next), then two texts fill the
        # queue; the probe then finds it full
        threads = start(1, lambda: batcher._in_flight == 1)
        threads += start(1, lambda: batcher._in_flight == 2)
        threads += start(2, lambda: batcher.queued == 2)
        r = c.post("/v1/models/slow/predict", json={"texts": ["a"]})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1" and "full" in r.json()["error"]
        for t in threads:
            t.join()
        gate.set()
        assert 504 in results
        assert c.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/toy/predict", {"texts": ["a", "b", "c"]}),
        (
            "/v2/models/toy/infer",
            {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"] * 3}]},
        ),
    ],
)
def test_request_larger_than_the_whole_queue_is_413_without_retry_after(
    repo: Path, path: str, body: dict[str, object]
) -> None:
    with make_client(repo, max_queue=2) as c:
        r = c.post(path, json=body)
    assert r.status_code == 413
    assert "retry-after" not in r.headers
    assert "has 3 texts" in r.json()["error"] and "at most 2 texts" in r.json()["error"]


def test_inference_failure_is_a_generic_json_500_and_the_log_has_the_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a ValueError raised inside inference is the server's failure, not the client's (not 400)
    root = toy_repo(tmp_path / "m", {"bad": [1]})
    app = create_app(
        str(root),
        loader=lambda p: ToyPredictor("bad", 1, fail_on="boom", error=ValueError),
        poll=False,
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/models/bad/predict", json={"texts": ["boom"]})
        assert r.status_code == 500
        assert r.json() == {
            "error": "internal server error in model bad version 1; see the server log"
        }
        req = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["boom"]}]}
        r = c.post("/v2/models/bad/infer", json=req)
        assert r.status_code == 500 and "toy failure" not in r.text and "Traceback" not in r.text
        assert c.post("/v1/models/bad/predict", json={"texts": ["fine"]}).status_code == 200
        assert 'endpoint="predict",model="bad",status="500"' in c.get("/metrics").text
    failures = [rec for rec in caplog.records if rec.exc_info]
    assert failures and "toy failure" in caplog.text and "Traceback" in caplog.text


def test_regression_model_has_only_scores(tmp_path: Path) -> None:
    root = toy_repo(tmp_path / "m", {"reg": [1]})
    app = create_app(
        str(root), loader=lambda p: ToyPredictor("reg", 1, task="regression"), poll=False
    )
    with TestClient(app) as c:
        meta = c.get("/v2/models/reg").json()
        assert [o["name"] for o in meta["outputs"]] == ["scores"]
        assert meta["outputs"][0]["shape"] == [-1, 1]
        req = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ab c"]}]}
        out = c.post("/v2/models/reg/infer", json=req).json()["outputs"]
        assert out == [{"name": "scores", "datatype": "FP32", "shape": [1, 1], "data": [3.0]}]
        pred = c.post("/v1/models/reg/predict", json={"texts": ["ab c"]}).json()["predictions"]
        assert pred == [{"label": None, "score": 3.0, "scores": {}}]


# ------------------------------------------------------------------------------ hot reload
def test_without_aliases_the_newest_version_serves_and_old_ones_are_dropped(repo: Path) -> None:
    # a repository without aliases.json (written before aliases) serves its newest version
    with make_client(repo) as c:
        state = c.app.state.server  # type: ignore[attr-defined]
        add_toy_version(repo, "toy", 5)
        (repo / "toy" / ".tmp-half").mkdir()  # an exporter mid-write: ignored
        assert c.portal.call(state.repo.refresh) is True  # type: ignore[union-attr]
        assert c.post("/v1/models/toy/predict", json={"texts": ["a"]}).json()["version"] == 5
        assert state.repo.get("toy", 5).predictor.warmed
        # a version no alias names is not kept loaded
        assert c.post("/v1/models/toy/versions/2/predict", json={"texts": ["a"]}).status_code == 404
        assert sorted(state.repo.models["toy"].versions) == [5]
        # a new model appears, a model disappears
        add_toy_version(repo, "fresh", 1)
        import shutil

        shutil.rmtree(repo / "other")
        c.portal.call(state.repo.refresh)  # type: ignore[union-attr]
        names = [m["name"] for m in c.get("/v1/models").json()["models"]]
        assert names == ["fresh", "toy"]


def test_a_broken_new_version_keeps_the_old_one_serving(repo: Path) -> None:
    def loader(path: Path) -> ToyPredictor:
        if path.name == "7":
            raise ValueError("corrupt bundle")
        return toy_loader(path)

    app = create_app(str(repo), loader=loader, poll=False)
    with TestClient(app) as c:
        add_toy_version(repo, "toy", 7)
        c.portal.call(app.state.server.repo.refresh)  # type: ignore[union-attr]
        assert c.post("/v1/models/toy/predict", json={"texts": ["a"]}).json()["version"] == 2
        assert c.get("/v2/health/ready").status_code == 200


def test_the_followed_alias_is_a_setting_and_a_flag() -> None:
    from pydantic import ValidationError

    from modelyard.cli import build_parser

    assert ServeConfig().alias == "server"
    with pytest.raises(ValidationError):
        ServeConfig(alias="3")  # a number would read as a version
    args = build_parser().parse_args(["serve", "models", "--alias", "edge"])
    assert args.alias == "edge"
