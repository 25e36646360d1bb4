"""deploy/llm/: a generative run's merged Hugging Face directory served by vLLM, on KServe's Hugging
Face runtime and on Ray Serve's LLM app. The recipes are read, never run (no GPU, vLLM or cluster
here).

KServe's InferenceService is checked against the field names of KServe's CRD and the flags of its
Hugging Face runtime (both copied below from kserve/kserve); Ray Serve's config is validated by the
installed Ray's own schemas (``ServeDeploySchema``, ``LLMConfig``, ``AutoscalingConfig``) and, where
vLLM is installed, its engine arguments by vLLM's. Both recipes must name the same model, storage
and engine settings, and the directory they load must be what ``modelyard export RUN --merged DIR``
writes: a run is exported here and read back the way Ray Serve reads a model's config.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KSERVE = ROOT / "deploy" / "llm" / "kserve-inferenceservice.yaml"
RAY = ROOT / "deploy" / "llm" / "ray-serve.yaml"
EXAMPLE = ROOT / "examples" / "definitions.yaml"  # the run the recipes are written for
STORAGE = "s3://my-bucket/llm/definitions"  # the placeholder both recipes load the model from

# KServe's CRD (config/crd/full/serving.kserve.io_inferenceservices.yaml, v1beta1): the fields
# of the parts these recipes write, a subset of each level's properties
PREDICTOR_FIELDS = {
    "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency", "timeout",
    "serviceAccountName", "nodeSelector", "tolerations", "annotations", "labels", "model",
}  # fmt: skip
MODEL_FIELDS = {
    "modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "args", "env",
    "resources", "volumeMounts",
}  # fmt: skip
# the flags of KServe's Hugging Face runtime (python/huggingfaceserver/huggingfaceserver/
# __main__.py, kserve.model_server's parser) these recipes may pass; --dtype is vLLM's own
# under the vLLM backend
HF_RUNTIME_FLAGS = {
    "--model_name", "--model_dir", "--model_id", "--backend", "--max_model_len", "--dtype",
    "--trust_remote_code",
}  # fmt: skip
HF_RUNTIME_BACKENDS = {"auto", "huggingface", "vllm"}
# KServe flags that are vLLM engine arguments: the Ray recipe's engine_kwargs by the same name
ENGINE_FLAGS = ("--max_model_len", "--dtype")
# ray.serve.llm.LLMServingArgs (ray/llm/_internal/serve/core/ingress/builder.py): its module
# imports vLLM, so its fields are listed here for when vLLM is absent
SERVING_ARGS_FIELDS = {"llm_configs", "ingress_cls_config", "ingress_deployment_config"}

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _known(mapping: dict[str, Any], fields: set[str] | Any, where: str) -> None:
    unknown = sorted(set(mapping) - set(fields))
    assert not unknown, f"{where}: unknown field(s) {unknown}"


def _flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a dict; every argument must have that form."""
    flags = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        assert name.startswith("--") and sep, f"{arg!r}: write flags as --name=value"
        flags[name] = value
    return flags


def _fields(model: Any) -> set[str]:
    return set(model.model_fields)


def _llm_config_class() -> Any:
    """``ray.serve.llm.LLMConfig``; without vLLM (whose import that module needs), the class it
    subclasses unchanged."""
    if HAS_VLLM:
        from ray.serve.llm import LLMConfig

        return LLMConfig
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    return LLMConfig


def check_kserve(doc: dict[str, Any]) -> dict[str, Any]:
    """The InferenceService's names against KServe's; returns its model spec."""
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    _known(doc, {"apiVersion", "kind", "metadata", "spec"}, "InferenceService")
    _known(doc["spec"], {"predictor"}, "spec")
    predictor = doc["spec"]["predictor"]
    _known(predictor, PREDICTOR_FIELDS, "spec.predictor")
    assert predictor.get("scaleMetric", "concurrency") in {"cpu", "memory", "concurrency", "rps"}
    model = predictor["model"]
    _known(model, MODEL_FIELDS, "spec.predictor.model")
    _known(model["modelFormat"], {"name", "version"}, "spec.predictor.model.modelFormat")
    # KServe's Hugging Face runtime, the ClusterServingRuntime KServe installs for this format
    assert model["modelFormat"]["name"] == "huggingface"
    assert model["runtime"] == "kserve-huggingfaceserver"
    flags = _flags(model["args"])
    _known(flags, HF_RUNTIME_FLAGS, "the runtime's args")
    assert flags["--backend"] in HF_RUNTIME_BACKENDS and flags["--backend"] == "vllm"
    assert flags["--model_name"] == doc["metadata"]["name"]
    # the model is storageUri, which the storage initializer puts at --model_dir's default
    # (/mnt/models); --model_id would download one from the Hugging Face Hub instead
    assert "--model_id" not in flags and "--model_dir" not in flags
    assert model["storageUri"].startswith(("s3://", "gs://", "pvc://", "https://"))
    resources = model["resources"]
    _known(resources, {"requests", "limits", "claims"}, "spec.predictor.model.resources")
    for side in ("requests", "limits"):
        assert {"cpu", "memory", "nvidia.com/gpu"} <= set(resources[side]), side
    # Kubernetes wants an extended resource's request equal to its limit: one whole GPU
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    return model


def check_ray(doc: dict[str, Any]) -> Any:
    """The Serve config through Ray's schemas; returns the validated ``LLMConfig``."""
    from ray.serve._private.config import DeploymentConfig
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    # Ray's Serve schemas let unknown keys through: each level is checked against its fields
    _known(doc, _fields(ServeDeploySchema), "Serve config")
    _known(doc["http_options"], _fields(HTTPOptionsSchema), "http_options")
    ServeDeploySchema.model_validate(doc)
    (app,) = doc["applications"]
    _known(app, _fields(ServeApplicationSchema), "applications[0]")
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    assert app["route_prefix"] == "/"  # the OpenAI routes at /v1/...
    serving_args = SERVING_ARGS_FIELDS
    if HAS_VLLM:
        from ray.serve.llm import LLMServingArgs

        serving_args = _fields(LLMServingArgs)
        LLMServingArgs.model_validate(app["args"])
    _known(app["args"], serving_args, "applications[0].args")
    (raw,) = app["args"]["llm_configs"]
    config = _llm_config_class().model_validate(raw)  # unknown fields refused
    deployment = raw["deployment_config"]
    _known(deployment, _fields(DeploymentConfig), "deployment_config")
    _known(deployment["autoscaling_config"], _fields(AutoscalingConfig), "autoscaling_config")
    scaling = AutoscalingConfig(**deployment["autoscaling_config"])
    assert 1 <= scaling.min_replicas <= scaling.max_replicas
    assert config.llm_engine == "vLLM" and config.accelerator_config.kind == "gpu"
    if HAS_VLLM:
        config.get_engine_config()  # refuses an engine_kwargs key vLLM does not know
    return config


@pytest.mark.unit
def test_the_kserve_service_uses_the_vllm_backed_huggingface_runtime() -> None:
    model = check_kserve(_load(KSERVE))
    assert model["storageUri"] == STORAGE


@pytest.mark.unit
def test_the_ray_serve_config_validates_against_rays_schemas() -> None:
    doc = _load(RAY)
    config = check_ray(doc)
    assert config.model_loading_config.model_source == STORAGE
    assert doc["http_options"]["port"] == 8000


@pytest.mark.unit
def test_both_recipes_serve_the_example_run_the_same_way() -> None:
    kserve, ray = _load(KSERVE), _load(RAY)
    predictor = kserve["spec"]["predictor"]
    flags = _flags(predictor["model"]["args"])
    (raw,) = ray["applications"][0]["args"]["llm_configs"]
    example = _load(EXAMPLE)
    assert flags["--model_name"] == raw["model_loading_config"]["model_id"] == example["name"]
    assert predictor["model"]["storageUri"] == raw["model_loading_config"]["model_source"]
    assert predictor["model"]["storageUri"].rstrip("/").endswith("/" + example["name"])
    # the same vLLM engine settings: a KServe flag is the engine argument of the same name
    engine = {name.removeprefix("--"): flags[name] for name in ENGINE_FLAGS}
    assert engine == {k: str(v) for k, v in raw["engine_kwargs"].items()}
    # the served context holds the longest record the run trained on
    assert int(engine["max_model_len"]) >= example["tokenizer"]["max_length"]
    # the same replicas, added past the same requests in flight per replica
    scaling = raw["deployment_config"]["autoscaling_config"]
    assert predictor["scaleMetric"] == "concurrency"
    kserve_scaling = (predictor[k] for k in ("minReplicas", "maxReplicas", "scaleTarget"))
    ray_scaling = (scaling[k] for k in ("min_replicas", "max_replicas", "target_ongoing_requests"))
    assert tuple(kserve_scaling) == tuple(ray_scaling)


def _misspelt(doc: dict[str, Any], path: tuple[str | int, ...], new: str) -> dict[str, Any]:
    """``doc`` with the key at ``path`` renamed to ``new``."""
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[new] = parent.pop(path[-1])
    return doc


@pytest.mark.unit
def test_a_misspelt_field_fails_the_checks() -> None:
    kserve, ray = _load(KSERVE), _load(RAY)
    model = ("spec", "predictor", "model")
    for path, new in [
        ((*model, "storageUri"), "storageURI"),
        ((*model, "modelFormat"), "model_format"),
        (("spec", "predictor", "maxReplicas"), "max_replicas"),
    ]:
        with pytest.raises(AssertionError, match="unknown field"):
            check_kserve(_misspelt(kserve, path, new))
    bad = copy.deepcopy(kserve)
    bad["spec"]["predictor"]["model"]["args"][0] = "--model-name=definitions"
    with pytest.raises(AssertionError, match="unknown field"):
        check_kserve(bad)

    llm = ("applications", 0, "args", "llm_configs", 0)
    for path, new in [
        (("http_options",), "http_option"),
        (("applications", 0, "import_path"), "importpath"),
        (("applications", 0, "args", "llm_configs"), "llm_config"),
        ((*llm, "model_loading_config", "model_source"), "model_sorce"),
        ((*llm, "engine_kwargs"), "engine_args"),
        ((*llm, "deployment_config", "autoscaling_config"), "autoscaling"),
        ((*llm, "deployment_config", "autoscaling_config", "min_replicas"), "min_replica"),
    ]:
        with pytest.raises((AssertionError, ValueError)):
            check_ray(_misspelt(ray, path, new))


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (it needs a GPU machine)")
@pytest.mark.unit
def test_vllm_knows_the_engine_arguments() -> None:  # pragma: no cover - no vLLM in CI
    from vllm.engine.arg_utils import AsyncEngineArgs

    (raw,) = _load(RAY)["applications"][0]["args"]["llm_configs"]
    AsyncEngineArgs(model="unused", **raw["engine_kwargs"])


@pytest.mark.integration
def test_the_recipes_load_what_export_merged_writes(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from helpers.tiny_llm import CHATML, tiny_llama_dir, tiny_tokenizer

    from modelyard.cli import main
    from modelyard.config import dump_config, load_config
    from modelyard.models.causal_lm import load_causal_lm
    from modelyard.training.checkpoint import save_weights
    from modelyard.training.generative import causal_config

    # a generation run as training leaves it (config, run.json, adapter checkpoint), its
    # adapters as LoRA initializes them: the layout, not the training, is under test
    base = tiny_llama_dir(tmp_path / "base", tiny_tokenizer())
    records = tmp_path / "train.jsonl"
    chat = [
        {"role": "user", "content": "What is a cat?"},
        {"role": "assistant", "content": "A pet."},
    ]
    records.write_text(json.dumps({"messages": chat}) + "\n")
    config = load_config(
        {
            "name": "definitions",
            "task": "generation",
            "output_dir": str(tmp_path / "runs"),
            "data": {"train": str(records)},
            "model": {"kind": "causal_lm", "path": str(base), "lora": {"r": 4, "alpha": 8}},
        }
    )
    run = tmp_path / "runs" / "definitions"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(config))
    (run / "run.json").write_text(json.dumps({"task": "generation", "labels": []}))
    loaded = load_causal_lm(causal_config(config))
    save_weights(run / "checkpoints" / "best.safetensors", loaded.model)

    merged = tmp_path / "merged"
    assert main(["export", str(run), "--merged", str(merged)]) == 0
    names = {p.name for p in merged.iterdir()}
    # what vLLM loads: config.json, safetensors weights (never pickles), the tokenizer and its
    # chat template; no adapter files (the adapters are merged in)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth")) or "adapter" in n]
    # KServe's runtime picks vLLM by config.json's architectures; Ray Serve reads the same file
    hf_config = json.loads((merged / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForCausalLM"]
    # the RoPE base also at the top, where transformers-4 images read it (else: 10000, silently)
    assert hf_config["rope_theta"] == hf_config["rope_parameters"]["rope_theta"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(merged))
    assert tokenizer.chat_template == CHATML
    assert hf_config["eos_token_id"] == tokenizer.eos_token_id  # vLLM stops on it

    # the Ray recipe's LLMConfig, its model_source this directory, reads it as Ray Serve does
    # when a replica starts (the model's config, its architecture, text in)
    (raw,) = _load(RAY)["applications"][0]["args"]["llm_configs"]
    raw = copy.deepcopy(raw)
    raw["model_loading_config"]["model_source"] = str(merged)
    llm_config = _llm_config_class().model_validate(raw)
    llm_config.apply_checkpoint_info(str(merged))
    assert llm_config.model_architecture == "LlamaForCausalLM"
    assert llm_config.input_modality == "text"
    if HAS_VLLM:  # pragma: no cover - no vLLM in CI
        from vllm import ModelRegistry

        assert "LlamaForCausalLM" in ModelRegistry.get_supported_archs()
