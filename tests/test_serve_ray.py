"""``serve --ray``: the same app as Ray Serve replicas, on a local Ray bound to 127.0.0.1.

A real (tiny, torch-free) bundle behind two replicas answers v1 predict and v2 infer through Ray's
HTTP proxy, both replicas answering; ``modelyard serve --ray`` does the same from the command
line and stops cleanly on SIGINT. Ray's start dominates the time (10-20 s each).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
from helpers.serving import build_real_bundle, free_port
from ray import serve

from modelyard.cli import main
from modelyard.config import ServeConfig
from modelyard.errors import ConfigError
from modelyard.runtime import load
from modelyard.serving.ray_serve import (
    APP_NAME,
    REPLICA_HEADER,
    ModelyardReplica,
    build_app,
    deploy,
    deployment_options,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TEXTS = ["good film", "awful plot boring", "the actor was fun fun fun", "great"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_real_bundle(root, "tiny")
    return root


def _infer_request(texts: list[str]) -> dict[str, object]:
    return {
        "id": "r1",
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
    }


# ------------------------------------------------------------------------- no Ray cluster needed
def test_replicas_and_autoscaling_bounds_come_from_the_settings() -> None:
    fixed = deployment_options(ServeConfig(replicas=3, max_batch_size=16))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 32  # room for a batch while the previous one runs
    scaled = deployment_options(ServeConfig(replicas=2, max_replicas=5, max_batch_size=16))
    assert "num_replicas" not in scaled
    bounds = scaled["autoscaling_config"]
    assert (bounds["min_replicas"], bounds["initial_replicas"], bounds["max_replicas"]) == (2, 2, 5)
    assert bounds["target_ongoing_requests"] == 16
    with pytest.raises(ConfigError, match=r"max_replicas \(1\) is less than replicas \(2\)"):
        ServeConfig.from_settings({"replicas": 2, "max_replicas": 1})


def test_cli_refuses_max_replicas_below_replicas(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", str(repo), "--ray", "--replicas", "2", "--max-replicas", "1"]
    assert main(argv) == 2
    assert "max_replicas (1) is less than replicas (2)" in capsys.readouterr().err
    assert main(["serve", str(repo), "--ray", "--workers", "2"]) == 2
    assert "use --replicas N" in capsys.readouterr().err


def test_build_app_takes_serve_run_arguments(repo: Path) -> None:
    app = build_app({"repo": str(repo), "replicas": "2", "max_batch_size": "8"})
    assert type(app).__name__ == "Application"
    with pytest.raises(ConfigError, match="repo=DIR is required"):
        build_app({"replicas": "2"})
    with pytest.raises(ConfigError, match="replicas: Input should be greater than or equal to 1"):
        build_app({"repo": str(repo), "replicas": "0"})
    with pytest.raises(ConfigError, match="nowhere: model repository not found"):
        build_app({"repo": "nowhere"})


def test_health_check_is_the_repository_readiness(repo: Path) -> None:
    replica = ModelyardReplica(str(repo), ServeConfig(poll_s=60).model_dump())

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="model repository is not ready"):
            await replica.check_health()  # no app yet
        app = replica.__serve_build_asgi_app__()
        with pytest.raises(RuntimeError, match="not ready"):
            await replica.check_health()  # built, models not loaded
        async with app.router.lifespan_context(app):
            await replica.check_health()  # loaded and warm
        with pytest.raises(RuntimeError, match="not ready"):
            await replica.check_health()  # stopped

    asyncio.run(scenario())


def test_without_ray_the_cli_says_what_to_install(repo: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "from modelyard.cli import main\n"
        f"sys.exit(main(['serve', {str(repo)!r}, '--ray']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "pip install 'modelyard[ray]'" in out.stderr


# -------------------------------------------------------------------------- on a real Ray
@pytest.mark.slow
def test_cli_serves_on_ray_until_sigint(repo: Path, tmp_path: Path) -> None:
    # runs before the in-process cluster below starts: one Ray at a time on a small machine
    port = free_port()
    cmd = [sys.executable, "-m", "modelyard", "--log-level", "warning", "serve", str(repo)]
    cmd += ["--ray", "--replicas", "1", "--max-replicas", "2", "--port", str(port)]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, log_path, deadline_s=90)
        with httpx.Client(base_url=url, timeout=10) as c:
            r = c.post("/v1/models/tiny/predict", json={"texts": TEXTS})
            assert r.status_code == 200 and len(r.json()["predictions"]) == len(TEXTS)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
        assert "serving" in log_path.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if client.get(url + "/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # Ray is still starting; poll again (bounded by the deadline)
    raise TimeoutError(f"not ready in {deadline_s} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def two_replicas(repo: Path) -> Iterator[str]:
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        port = free_port()
        deploy(repo, ServeConfig(port=port, replicas=2, poll_s=60))
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_two_replicas_answer_v1_predict_and_v2_infer(two_replicas: str, repo: Path) -> None:
    deployment = serve.status().applications[APP_NAME].deployments[APP_NAME]
    assert deployment.replica_states == {"RUNNING": 2}

    want = load(repo / "tiny").predict(TEXTS)
    replicas: set[str] = set()
    with httpx.Client(base_url=two_replicas, timeout=10) as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
        for _ in range(20):  # Ray's proxy spreads requests over the replicas
            r = c.post("/v1/models/tiny/predict", json={"texts": TEXTS})
            assert r.status_code == 200
            got = r.json()["predictions"]
            assert [p["label"] for p in got] == [p.label for p in want]
            np.testing.assert_allclose(
                [p["score"] for p in got], [p.score for p in want], atol=1e-6
            )
            replicas.add(r.headers[REPLICA_HEADER])

            r = c.post("/v2/models/tiny/infer", json=_infer_request(TEXTS[:2]))
            assert r.status_code == 200
            body = r.json()
            assert body["id"] == "r1" and body["model_version"] == "1"
            scores, labels = body["outputs"]
            assert scores["shape"] == [2, 3] and labels["data"] == [p.label for p in want[:2]]
            replicas.add(r.headers[REPLICA_HEADER])
        # the app's own errors pass through Ray unchanged
        r = c.post("/v1/models/nope/predict", json={"texts": ["x"]})
        assert r.status_code == 404 and "nope" in r.json()["error"]
    assert len(replicas) == 2
