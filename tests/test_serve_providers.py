"""``serve.providers``: the execution provider a real bundle is served on, or a clear error."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from helpers.serving import build_real_bundle
from starlette.testclient import TestClient

from modelyard.config import ServeConfig
from modelyard.errors import ConfigError
from modelyard.serving import create_app

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.integration
@pytest.mark.parametrize("providers", ["cpu", "auto"])
def test_a_real_bundle_serves_on_the_chosen_provider(tmp_path: Path, providers: str) -> None:
    build_real_bundle(tmp_path)
    app = create_app(str(tmp_path), ServeConfig(providers=providers))
    with TestClient(app) as client:
        reply = client.post("/v1/models/tiny/predict", json={"texts": ["a b", "c"]})
        assert reply.status_code == 200, reply.text
        (entry,) = app.state.server.repo.models.values()
        (version,) = entry.versions.values()
        used = version.predictor.backend.providers
        want = (
            "CUDAExecutionProvider" if providers == "auto" and HAS_CUDA else "CPUExecutionProvider"
        )
        assert used[0] == want


@pytest.mark.unit
@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA: the error cannot happen")
def test_cuda_without_cuda_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"serve\.providers: 'cuda' cannot run here.*onnxruntime-gpu"
    ):
        create_app(str(tmp_path), ServeConfig(providers="cuda"))


@pytest.mark.unit
def test_an_unknown_provider_names_the_choices() -> None:
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'auto'"):
        ServeConfig(providers="tpu")  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA: the error cannot happen")
def test_the_cli_says_cuda_cannot_run_here(tmp_path: Path) -> None:
    import subprocess
    import sys

    modelyard = str(Path(sys.executable).with_name("modelyard"))
    done = subprocess.run(
        [modelyard, "serve", str(tmp_path), "--providers", "cuda"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: serve.providers: 'cuda'")
