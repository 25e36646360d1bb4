"""The OpenAI routes over toy generators (no engine), in process and over real HTTP: request
validation (every bad field a 4xx in OpenAI's error shape), admission (503 + Retry-After at once
when every slot is busy and the waiting room full), the per-request deadline, a client that
disconnects mid-stream freeing its slot, the vLLM-named metrics, and generative and scoring
models kept to their own routes. The real engine is tests/test_generation_engine.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers.generation import ThreadServer, ToyGenerator, mixed_loader
from helpers.serving import toy_repo

from modelyard.config import ServeConfig
from modelyard.runtime.generation_params import ParamError
from modelyard.serving import create_app
from modelyard.serving.openai_protocol import parse_request

pytestmark = pytest.mark.unit

CHAT = {"model": "toy-llm", "messages": [{"role": "user", "content": "hi"}]}
BAD_CHAT_FIELDS: list[tuple[dict[str, Any], str | None]] = [
    ({"model": None}, "model"),
    ({"model": 3}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [7]}, "messages[0]"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": "9"}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": True}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": 2**40}, "seed"),
    ({"stop": 3}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"n": 2}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": []}}},
        "response_format",
    ),
    ({"tools": [{"type": "function"}]}, "tools"),
]


def test_every_bad_chat_field_is_a_param_error_that_names_it() -> None:
    parse_request(orjson.dumps(CHAT), chat=True)  # the base request is valid
    for change, param in BAD_CHAT_FIELDS:
        body = orjson.dumps(CHAT | change)
        with pytest.raises(ParamError) as caught:
            parse_request(body, chat=True)
        assert caught.value.param == param, (change, caught.value)


def test_completions_take_one_prompt_and_a_count_of_logprobs() -> None:
    parsed = parse_request(b'{"model": "m", "prompt": ["once"], "logprobs": 2}', chat=False)
    assert (parsed.request, parsed.params.top_logprobs, parsed.params.logprobs) == ("once", 2, True)
    for bad, param in [({"prompt": [1, 2]}, "prompt"), ({"prompt": None}, "prompt")]:
        with pytest.raises(ParamError) as caught:
            parse_request(orjson.dumps({"model": "m"} | bad), chat=False)
        assert caught.value.param == param
    with pytest.raises(ParamError, match="logprobs must be an integer 0 to 5"):
        parse_request(b'{"model": "m", "prompt": "a", "logprobs": 6}', chat=False)
    for body in (b"{", b"[1]", b'"x"', b"\xff"):
        with pytest.raises(ParamError):
            parse_request(body, chat=False)


@pytest.fixture
def toy() -> ToyGenerator:
    return ToyGenerator(slots=2, delay_s=0.001)


@pytest.fixture
def server(tmp_path: Path, toy: ToyGenerator) -> Iterator[ThreadServer]:
    repo = toy_repo(tmp_path / "models", {"toy-llm": [1], "classifier": [1]})
    settings = ServeConfig(generation_max_waiting=1, generation_timeout_s=5.0, poll_s=60.0)
    app = create_app(str(repo), settings, loader=mixed_loader({"toy-llm": toy}), poll=False)
    with ThreadServer(app) as running:
        yield running


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + '{model_name="toy-llm"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")  # the queue sets it when it starts


def test_bad_requests_are_4xx_in_openai_shape(server: ThreadServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for change, param in BAD_CHAT_FIELDS:
            error = _error(client.post("/v1/chat/completions", json=CHAT | change), 400)
            assert error["param"] == param and error["type"] == "invalid_request_error"
        for body in (b"{", b"[]", b"null", b'{"model": "toy-llm"}'):
            _error(client.post("/v1/completions", content=body), 400)
        error = _error(client.post("/v1/chat/completions", json=CHAT | {"model": "nope"}), 404)
        assert error["code"] == "model_not_found"
        _error(client.post("/v1/chat/completions", json=CHAT | {"model": "toy-llm:7"}), 404)
        _error(client.post("/v1/chat/completions", json=CHAT | {"model": "toy-llm:a b"}), 400)
        error = _error(client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 65}), 400)
        assert error["param"] == "max_tokens"
        _error(client.get("/v1/chat/completions"), 405)
        big = {"model": "toy-llm", "prompt": "x" * (5 * 1024 * 1024)}
        _error(client.post("/v1/completions", json=big), 413)
        # a classifier is not answered here, and a generative model does not score texts
        error = _error(
            client.post("/v1/chat/completions", json=CHAT | {"model": "classifier"}), 400
        )
        assert "not a generative one" in error["message"]
        got = client.post("/v1/models/toy-llm/predict", json={"texts": ["a"]})
        assert got.status_code == 400 and "generative" in got.json()["error"]
        assert (
            client.post("/v1/models/classifier/predict", json={"texts": ["a"]}).status_code == 200
        )


def test_models_list_has_openai_shape_beside_modelyards(server: ThreadServer) -> None:
    body = httpx.get(server.url + "/v1/models", timeout=10).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["toy-llm"]
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by"}
    assert {m["name"] for m in body["models"]} == {"classifier", "toy-llm"}


def test_answers_streams_and_usage(server: ThreadServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        body = client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 3}).json()
        assert body["choices"][0]["message"] == {"role": "assistant", "content": " w0 w1 w2"}
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        assert body["object"] == "chat.completion" and body["model"] == "toy-llm"
        ask = {"max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", "/v1/chat/completions", json=CHAT | ask) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.iter_lines() if line]
        assert events[-1] == "data: [DONE]"
        chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert text == " w0 w1"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
        prompt = {"model": "toy-llm:1", "prompt": "a", "max_tokens": 2, "logprobs": 0}
        body = client.post("/v1/completions", json=prompt).json()
        assert body["choices"][0]["text"] == " w0 w1"
        assert body["choices"][0]["logprobs"]["text_offset"] == [0, 3]


def test_a_full_server_answers_503_at_once_and_a_cut_stream_frees_its_slot(
    tmp_path: Path,
) -> None:
    gate = threading.Event()
    toy = ToyGenerator(slots=2, gate=gate, delay_s=0.05)  # 60 tokens: 3 s a stream
    repo = toy_repo(tmp_path / "models", {"toy-llm": [1]})
    settings = ServeConfig(generation_max_waiting=1, generation_timeout_s=20.0)
    app = create_app(str(repo), settings, loader=mixed_loader({"toy-llm": toy}), poll=False)
    ask = CHAT | {"max_tokens": 60, "stream": True}
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        streams = [httpx.Client(base_url=server.url, timeout=10) for _ in range(3)]
        opened = []
        try:
            for c in streams:  # two take the slots, the third waits
                threading.Thread(
                    target=lambda c=c: opened.append(_open(c, ask)), daemon=True
                ).start()
            _until(
                lambda: (
                    _metric(client, "vllm:num_requests_running") == 2
                    and _metric(client, "vllm:num_requests_waiting") == 1
                )
            )
            t0 = time.monotonic()
            full = client.post("/v1/chat/completions", json=ask)
            assert time.monotonic() - t0 < 1.0
            assert _error(full, 503)["code"] == "overloaded"
            assert full.headers["retry-after"] == "1"
            gate.set()  # tokens flow; the waiting one gets a slot when a stream is cut
            _until(lambda: len(opened) >= 2)
            for response in opened[:2]:  # read one event, then hang up mid-stream
                next(response.iter_lines())
                response.close()
            _until(lambda: len(opened) == 3)
            next(opened[2].iter_lines())
            opened[2].close()
            _until(lambda: _metric(client, "vllm:num_requests_running") == 0 and toy.active == 0)
            assert toy.cut == 3
            body = client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 2}).json()
            assert body["choices"][0]["message"]["content"] == " w0 w1"
        finally:
            gate.set()
            for c in streams:
                c.close()


def test_a_request_past_its_deadline_is_a_504_and_stops_the_engine(tmp_path: Path) -> None:
    toy = ToyGenerator(slots=1, delay_s=0.05)
    repo = toy_repo(tmp_path / "models", {"toy-llm": [1]})
    settings = ServeConfig(generation_timeout_s=0.3)
    app = create_app(str(repo), settings, loader=mixed_loader({"toy-llm": toy}), poll=False)
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        late = client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 60})
        assert _error(late, 504)["code"] == "timeout"
        _until(lambda: toy.active == 0)
        assert toy.cut == 1


def test_a_client_gone_before_a_whole_answer_stops_the_engine(tmp_path: Path) -> None:
    toy = ToyGenerator(slots=1, delay_s=0.05)
    repo = toy_repo(tmp_path / "models", {"toy-llm": [1]})
    app = create_app(str(repo), ServeConfig(), loader=mixed_loader({"toy-llm": toy}), poll=False)
    with ThreadServer(app) as server:
        body = json.dumps(CHAT | {"max_tokens": 60}).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head.encode() + body)
            _until(lambda: toy.active == 1)  # the engine is answering (60 tokens take 3 s)
        # the client hung up before the whole answer: the engine stops at its next token
        _until(lambda: toy.active == 0)
        assert toy.cut == 1


def _open(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    request = client.build_request("POST", "/v1/chat/completions", json=body)
    response = client.send(request, stream=True)
    assert response.status_code == 200, response.read()
    return response


def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)  # bounded by the deadline


def test_generative_models_follow_aliases_roll_back_and_take_api_keys(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from modelyard.versions import set_alias

    repo = toy_repo(tmp_path / "models", {"toy-llm": [1, 2]})
    set_alias(repo / "toy-llm", "server", 1)
    keys = tmp_path / "keys"
    keys.write_text("sesame\n")

    def load(path: Path) -> ToyGenerator:
        return ToyGenerator(path.parent.name, int(path.name))

    settings = ServeConfig(api_key_file=str(keys))
    app = create_app(str(repo), settings, loader=load, poll=False)
    auth = {"Authorization": "Bearer sesame"}
    with TestClient(app, raise_server_exceptions=False) as c:

        def version(model: str = "toy-llm") -> str:
            got = c.post("/v1/chat/completions", json=CHAT | {"model": model}, headers=auth)
            assert got.status_code == 200, got.text
            return str(got.json()["system_fingerprint"])

        refused = c.post("/v1/chat/completions", json=CHAT)
        assert _error(refused, 401)["type"] == "authentication_error"
        assert version() == "toy-llm-v1"
        assert version("toy-llm:server") == "toy-llm-v1"
        set_alias(repo / "toy-llm", "server", 2)  # promote
        c.portal.call(app.state.server.repo.refresh)
        assert version() == "toy-llm-v2"
        set_alias(repo / "toy-llm", "server", 1)  # roll back
        c.portal.call(app.state.server.repo.refresh)
        assert version() == "toy-llm-v1"


def test_a_client_gone_while_waiting_for_a_slot_leaves_the_queue(tmp_path: Path) -> None:
    gate = threading.Event()
    toy = ToyGenerator(slots=1, gate=gate)
    repo = toy_repo(tmp_path / "models", {"toy-llm": [1]})
    app = create_app(str(repo), ServeConfig(), loader=mixed_loader({"toy-llm": toy}), poll=False)
    ask = CHAT | {"max_tokens": 2, "stream": True}
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        holder = threading.Thread(
            target=lambda: httpx.post(server.url + "/v1/chat/completions", json=ask, timeout=20),
            daemon=True,
        )
        holder.start()
        try:
            _until(lambda: _metric(client, "vllm:num_requests_running") == 1)
            with pytest.raises(httpx.ReadTimeout):  # waits for the one slot, then hangs up
                httpx.post(server.url + "/v1/chat/completions", json=ask, timeout=0.5)
            _until(lambda: _metric(client, "vllm:num_requests_waiting") == 0)
            assert _metric(client, "vllm:num_requests_running") == 1
        finally:
            gate.set()
            holder.join(20)
        _until(lambda: _metric(client, "vllm:num_requests_running") == 0)
        assert toy.cut == 0  # the one that waited never reached the engine
