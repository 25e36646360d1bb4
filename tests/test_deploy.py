"""deploy/: the serving image installs the serving side and nothing more; the KServe runtime runs.

The image recipe is read, not built (no container engine here): its install lines are checked
against the package, pip resolves what they install from the files the recipe copies (no torch,
no exporters), and the KServe runtime's container arguments start a real server that answers its
probes and a v2 request.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.serving import ServerProcess, build_real_bundle

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# what the training side adds; none of it may reach the serving image
TRAINING_ONLY = {"torch", "transformers", "peft", "onnx", "onnxscript", "safetensors", "matplotlib"}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())  # join continued lines
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every ``pip install`` in the final stage's RUN lines."""
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _instructions(dockerfile):
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest))
    installs = []
    for word, rest in stages[-1]:
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            args = shlex.split(command)
            if args[:2] == ["pip", "install"]:
                installs.append([a for a in args[2:] if not a.startswith("-")])
    return installs


@pytest.mark.unit
def test_the_image_installs_the_modelyard_wheel_with_no_extra() -> None:
    installs = _pip_installs(DEPLOY / "Dockerfile")
    assert installs == [["/wheels/modelyard-*.whl"]], installs


@pytest.mark.unit
def test_the_install_line_check_sees_an_extra_or_another_package(tmp_path: Path) -> None:
    for line in (
        "RUN pip install /wheels/modelyard-*.whl[train]",
        "RUN pip install /wheels/modelyard-*.whl torch==2.13.0",
        "RUN pip install --no-cache-dir /wheels/modelyard-*.whl && pip install transformers",
    ):
        recipe = tmp_path / "Dockerfile"
        recipe.write_text(f"FROM python:3.11-slim\n{line}\n")
        assert _pip_installs(recipe) != [["/wheels/modelyard-*.whl"]], line


@pytest.mark.slow
@pytest.mark.integration
def test_the_serving_install_resolves_without_torch(tmp_path: Path) -> None:
    # the build stage's context is what the recipe copies; pip resolves the wheel built from it
    context = tmp_path / "src"
    context.mkdir()
    copies = [rest.split() for word, rest in _instructions(DEPLOY / "Dockerfile") if word == "COPY"]
    for *sources, _dest in (c for c in copies if not c[0].startswith("--from")):
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(
                    path, context / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(path, context / source)
    report = tmp_path / "report.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            str(context),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"modelyard", "onnxruntime", "tokenizers", "uvicorn", "starlette"} <= names
    assert not names & TRAINING_ONLY, sorted(names & TRAINING_ONLY)


@pytest.mark.integration
def test_the_kserve_runtime_serves_a_repository_over_v2(tmp_path: Path) -> None:
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["v2"]
    (container,) = runtime["spec"]["containers"]
    (port,) = (p["containerPort"] for p in container["ports"])
    args = container["args"]
    assert args[0] == "/mnt/models" and args[args.index("--port") + 1] == str(port)

    # the image's entry point is `modelyard serve`: run it with the runtime's arguments, this
    # test's repository and port in place of /mnt/models and 8080
    repo = tmp_path / "models"
    build_real_bundle(repo, name="sentiment")
    modelyard = str(Path(sys.executable).with_name("modelyard"))

    def command(free: int) -> list[str]:
        mine = [str(repo) if a == "/mnt/models" else a for a in args]
        mine[mine.index("--host") + 1] = "127.0.0.1"
        mine[mine.index("--port") + 1] = str(free)
        return [modelyard, "serve", *mine]

    server = ServerProcess(repo, command=command, deadline_s=60.0)
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            for probe in ("readinessProbe", "livenessProbe"):
                assert client.get(container[probe]["httpGet"]["path"]).status_code == 200
            tensor = {"name": "text", "datatype": "BYTES", "shape": [2]}
            tensor["data"] = ["great food", "awful service"]
            reply = client.post("/v2/models/sentiment/infer", json={"inputs": [tensor]})
            assert reply.status_code == 200, reply.text
            outputs = {o["name"]: o for o in reply.json()["outputs"]}
            assert outputs["label"]["shape"] == [2]
    finally:
        assert server.stop() == 0
