"""A generative bundle on the real engine (llama.cpp through xllamacpp): the runtime's Generator
(params, stream, UTF-8, stop strings, seed, log-probabilities, JSON schema, context, greedy text
under concurrent load) and ``modelyard serve`` driven by the official ``openai`` client over real
HTTP on 127.0.0.1, beside a classifier. The tiny llama is trained here for a few seconds on texts
with accents and emoji, so its byte-level tokens split characters (nothing is downloaded)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("xllamacpp")
openai = pytest.importorskip("openai")

from helpers.serving import ServerProcess, build_real_bundle  # noqa: E402
from helpers.tiny_llm import (  # noqa: E402
    TEXTS,
    tiny_gguf_bundle,
    tiny_llama_dir,
    tiny_tokenizer,
    train_tiny_llama,
)

from modelyard.runtime import GenerationParams, Generator, GeneratorSettings, load  # noqa: E402
from modelyard.runtime.generation_params import ContextLengthError  # noqa: E402

pytestmark = pytest.mark.integration

UTF8 = "Un café für Zoë 🙂🦊 naïve."
CAT = [{"role": "user", "content": "What is a cat?"}]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    texts = [*TEXTS, UTF8]
    tokenizer = tiny_tokenizer(texts=texts)
    model_dir = tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer)
    train_tiny_llama(model_dir, tokenizer, texts=texts)
    root = tmp_path_factory.mktemp("models")
    tiny_gguf_bundle(root, model_dir)
    build_real_bundle(root, name="classifier")
    return root


@pytest.fixture(scope="module")
def generator(repo: Path) -> Iterator[Generator]:
    loaded = load(repo / "tiny-llm", generation=GeneratorSettings(slots=3, threads=1))
    assert isinstance(loaded, Generator)
    yield loaded
    loaded.close()


def greedy(**kw: Any) -> GenerationParams:
    return GenerationParams(temperature=0.0, **kw)


def test_a_generator_answers_chats_and_prompts(generator: Generator) -> None:
    answer = generator.generate(CAT, greedy(max_tokens=20))
    assert (answer.text, answer.finish_reason) == ("A small pet.", "stop")
    assert answer.prompt_tokens > 5 and answer.completion_tokens > 3
    cut = generator.generate("Once upon a", greedy(max_tokens=2))
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 2)
    assert cut.text and " time there was a cat.".startswith(cut.text)
    streamed = list(generator.stream(CAT, greedy(max_tokens=20)))
    assert "".join(c.text for c in streamed) == answer.text
    assert streamed[-1].completion_tokens == answer.completion_tokens
    with generator.stream("Once upon a", greedy(max_tokens=100)) as stream:
        next(iter(stream))  # closed after one piece: the engine stops, the slot is free
    assert generator.generate(CAT, greedy(max_tokens=20)).text == answer.text


def test_a_character_split_across_tokens_never_arrives_broken(generator: Generator) -> None:
    full = generator.generate("Un", greedy(max_tokens=30)).text
    assert full == UTF8.removeprefix("Un")
    raw = generator.engine.answer({"prompt": "Un", "max_tokens": 1, "temperature": 0}, chat=False)
    assert "\ufffd" in raw["choices"][0]["text"]  # llama.cpp's whole answer, cut mid-character
    for n in range(1, 13):  # every cut, inside "é", "ü", "ë", the emoji and "ï" included
        whole = generator.generate("Un", greedy(max_tokens=n))
        pieces = [c.text for c in generator.stream("Un", greedy(max_tokens=n))]
        assert "\ufffd" not in whole.text and not any("\ufffd" in p for p in pieces)
        assert full.startswith(whole.text) and "".join(pieces) == whole.text


def test_stop_strings_seed_and_logprobs(generator: Generator) -> None:
    # " there" and " was" are separate tokens: the stop string spans them
    stopped = generator.generate("Once upon a", greedy(max_tokens=20, stop=("re w", "zzz")))
    assert (stopped.text, stopped.finish_reason) == (" time the", "stop")
    streamed = generator.stream("Once upon a", greedy(max_tokens=20, stop=("re w",)))
    assert "".join(c.text for c in streamed) == " time the"
    sampled = {
        seed: generator.generate("na", GenerationParams(max_tokens=8, temperature=2.0, seed=seed))
        for seed in range(5)
    }
    again = generator.generate("na", GenerationParams(max_tokens=8, temperature=2.0, seed=3))
    assert again.text == sampled[3].text
    assert len({g.text for g in sampled.values()}) > 1  # the seed is what decides
    scored = generator.generate(CAT, greedy(max_tokens=20, logprobs=True, top_logprobs=2))
    assert b"".join(t.text_bytes for t in scored.tokens).decode() == "A small pet."
    for token in scored.tokens:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
        assert token.top_logprobs[0].id == token.id  # greedy: the best is the one taken


def test_a_json_schema_constrains_the_answer(generator: Generator) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}},
        "required": ["answer", "legs"],
        "additionalProperties": False,
    }
    for seed in range(3):
        params = GenerationParams(max_tokens=100, temperature=1.0, seed=seed, json_schema=schema)
        answer = generator.generate(CAT, params)
        assert answer.finish_reason == "stop", answer.text
        jsonschema.validate(json.loads(answer.text), schema)
    anything = generator.generate(CAT, greedy(max_tokens=100, json_schema={}))
    assert anything.text.lstrip().startswith("{")


def test_a_prompt_and_max_tokens_beyond_the_context_are_refused(generator: Generator) -> None:
    assert generator.context_length == 128
    prompt = "Once upon a time there was a cat. " * 6
    n = generator.engine.count_tokens(prompt)
    assert 40 < n < 100
    with pytest.raises(ContextLengthError, match=f"the prompt takes {n} and max_tokens asks"):
        generator.generate(prompt, greedy(max_tokens=128 - n + 1))
    assert generator.generate(prompt, greedy(max_tokens=128 - n)).completion_tokens <= 128 - n
    chat = [{"role": "user", "content": prompt}]
    in_chat = generator.engine.count_tokens(chat)
    assert in_chat > n  # the chat template's tokens count too
    with pytest.raises(ContextLengthError):
        generator.generate(chat, greedy(max_tokens=128 - in_chat + 1))
    with pytest.raises(ContextLengthError, match="under the model's context length"):
        generator.generate("a", greedy(max_tokens=128))


def test_greedy_text_is_the_same_under_concurrent_load(generator: Generator) -> None:
    """A seeded greedy answer (llama.cpp's prompt cache off for it) and its log-probabilities
    are bitwise the same alone and while other streams, caching their prompts and sampling,
    decode in the other slots."""
    ask = greedy(max_tokens=12, seed=7, logprobs=True)
    alone = generator.generate("Once upon a", ask)
    others = ["What is a", "Un caf", "A loyal", "Be brief"]
    for trial in range(4):
        load_threads = [
            threading.Thread(
                target=generator.generate,
                args=(others[(trial + i) % 4], GenerationParams(max_tokens=40)),
            )
            for i in range(2)
        ]
        for thread in load_threads:
            thread.start()
        busy = generator.generate("Once upon a", ask)
        for thread in load_threads:
            thread.join(30)
        assert busy.text == alone.text
        assert [t.logprob for t in busy.tokens] == [t.logprob for t in alone.tokens]


# ------------------------------------------------------------------------------------ serving
@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    args = ["--generation-threads", "1", "--generation-slots", "2", "--poll-s", "60"]
    proc = ServerProcess(repo, *args)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_the_openai_client_lists_chats_and_completes(client: Any) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny-llm"]
    chat = client.chat.completions.create(
        model="tiny-llm", messages=CAT, max_tokens=20, temperature=0, logprobs=True, top_logprobs=1
    )
    assert chat.choices[0].message.content == "A small pet."
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.completion_tokens > 3 and chat.usage.total_tokens > 10
    assert "".join(t.token for t in chat.choices[0].logprobs.content) == "A small pet."
    stream = client.chat.completions.create(
        model="tiny-llm",
        messages=CAT,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "A small pet."
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    text = client.completions.create(
        model="tiny-llm:1", prompt="Once upon a", max_tokens=20, temperature=0, stop=["re w"]
    )
    assert (text.choices[0].text, text.choices[0].finish_reason) == (" time the", "stop")
    pieces = client.completions.create(
        model="tiny-llm", prompt="Un", max_tokens=1, temperature=0, stream=True
    )
    assert "".join(p.choices[0].text for p in pieces) == ""  # half of "é": held back


def test_the_openai_client_gets_openai_errors(client: Any) -> None:
    with pytest.raises(openai.BadRequestError, match="context length is 128 tokens"):
        prompt = "Once upon a time there was a cat. " * 6
        client.completions.create(model="tiny-llm", prompt=prompt, max_tokens=100)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=CAT)
    with pytest.raises(openai.BadRequestError, match="not a generative one"):
        client.chat.completions.create(model="classifier", messages=CAT)


def test_a_cut_stream_frees_its_slot_at_once(server: ServerProcess) -> None:
    ask = {"model": "tiny-llm", "prompt": "Once", "max_tokens": 100, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(4):  # more cuts than slots: a slot held by a cut stream would block
            with http.stream("POST", "/v1/completions", json=ask | {"temperature": 2.0}) as r:
                assert r.status_code == 200
                next(r.iter_lines())
        answer = http.post("/v1/chat/completions", json={"model": "tiny-llm", "messages": CAT})
        assert answer.json()["choices"][0]["message"]["content"] == "A small pet."
        metrics = http.get("/metrics").text
        assert 'vllm:num_requests_running{model_name="tiny-llm"} 0.0' in metrics
        assert 'vllm:generation_tokens_total{model_name="tiny-llm"}' in metrics
        # the classifier beside it is served as before
        scored = http.post("/v1/models/classifier/predict", json={"texts": ["good film"]})
        assert scored.status_code == 200
