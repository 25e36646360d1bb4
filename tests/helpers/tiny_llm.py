"""A tiny random llama and a byte-level BPE tokenizer with a ChatML template, built in-process:
what the causal LM and generation tests train, export and serve (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEXTS = [
    "Be brief.",
    "What is a cat?",
    "A small pet.",
    "What is a dog?",
    "A loyal pet that barks.",
    "Once upon a time there was a cat.",
]


def tiny_tokenizer(template: str | None = CHATML, texts: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer (320 ids) trained on ``texts``, with ChatML's specials."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = (texts if texts is not None else TEXTS) * 3 + ["user assistant system"]
    tok.train_from_iterator(corpus, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=template,
    )


def tiny_llama_dir(
    directory: Path, tokenizer: Any, *, seed: int = 0, positions: int = 128, width: int = 32
) -> Path:
    """Save a random 2-layer llama (width 32, or ``width``) and ``tokenizer`` as a Hugging Face
    directory."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


CHATS = [
    [{"role": "user", "content": "What is a cat?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a dog?"}],
]
ANSWERS = {"What is a cat?": "A small pet.", "What is a dog?": "A loyal pet that barks."}


def train_tiny_llama(
    directory: Path, tokenizer: Any, steps: int = 150, texts: list[str] | None = None
) -> Path:
    """Fine-tune the tiny llama in ``directory`` on :data:`CHATS` (answered as in
    :data:`ANSWERS`) and ``texts`` (default :data:`TEXTS`) until it repeats them, so greedy
    answers are whole words (a random model's stray bytes make ragged UTF-8); saved in place."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory))
    chats = [
        tokenizer.apply_chat_template(
            [*chat, {"role": "assistant", "content": ANSWERS[chat[-1]["content"]]}],
            tokenize=False,
        )
        for chat in CHATS
    ]
    rows = [tokenizer(text)["input_ids"] for text in chats + (TEXTS if texts is None else texts)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        for ids in rows:
            batch = torch.tensor([ids])  # (1, T)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(str(directory))
    return directory


def tiny_gguf_bundle(
    repo: Path, model_dir: Path, *, quantization: str = "f16", name: str = "tiny-llm"
) -> Any:
    """Write the Hugging Face llama in ``model_dir`` as a GGUF bundle ``repo/NAME/VERSION``
    (a :class:`modelyard.bundle.Bundle`), as an export of a generation run writes one."""
    import json

    from modelyard.bundle import GenerationSpec, generative_manifest, write_bundle
    from modelyard.exporters.gguf import write_gguf

    repo.mkdir(parents=True, exist_ok=True)
    scratch = repo / f".tiny-{name}-{quantization}.gguf"
    written = write_gguf(model_dir, scratch, quantization=quantization, name=name)
    settings = json.loads((model_dir / "tokenizer_config.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    template = settings.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    spec = GenerationSpec(
        engine="llama.cpp",
        context_length=int(config["max_position_embeddings"]),
        chat_template=template,
        stop_tokens=["<|im_end|>", "<|endoftext|>"],
        base_model=str(model_dir),
        licence=None,
        quantization=written.quantization,
    )
    manifest = generative_manifest(name, spec, format="gguf", model_file="model.gguf")
    bundle = write_bundle(repo, manifest, {"model.gguf": written.path})
    scratch.unlink()
    return bundle
