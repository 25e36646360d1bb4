"""The OpenAPI document: every route described, and the request schemas saying what the
validators accept (hypothesis-made bodies through both), the responses matching theirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers.serving import toy_loader, toy_repo
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from starlette.routing import Route
from starlette.testclient import TestClient

from modelyard.config import ServeConfig
from modelyard.serving import create_app
from modelyard.serving import schemas as s
from modelyard.serving.openapi import OPERATIONS, document
from modelyard.serving.protocol import Limits, ProtocolError, parse_infer, parse_predict

pytestmark = pytest.mark.unit

LIMITS = Limits(max_texts=3, max_text_chars=8)
OUTPUTS = ["scores", "label"]
PREDICT = Draft202012Validator(s.predict_request(LIMITS))
INFER = Draft202012Validator(s.infer_request(LIMITS, OUTPUTS))
# JSON as orjson reads it back: no lone surrogates, no integral floats (JSON Schema's "integer"
# takes 1.0, Python's int does not; no client sends a shape of 1.0)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
SCALARS = st.none() | st.booleans() | st.integers(-2, 5) | FLOATS | TEXT
ANY = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


def accepts(parse: Any, body: Any) -> bool:
    try:
        parse(orjson.dumps(body))
    except ProtocolError:
        return False
    return True


@pytest.fixture
def client(tmp_path: Path) -> Any:
    repo = toy_repo(tmp_path / "models", {"toy": [1]})
    app = create_app(str(repo), ServeConfig(), loader=toy_loader, poll=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_every_route_of_the_app_is_described(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    Draft202012Validator.check_schema(doc["paths"]["/v1/models/{name}/predict"]["post"])
    routes = {
        (m, r.path)
        for r in client.app.routes
        for m in r.methods
        if m != "HEAD"  # type: ignore[attr-defined]
    }
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == routes == set(OPERATIONS)  # nothing described that is not routed
    page = client.get("/docs")
    assert page.status_code == 200
    assert all(path.replace("{", "") in page.text.replace("{", "") for path in doc["paths"])


def test_a_route_without_a_description_is_refused() -> None:
    async def nothing(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(LookupError, match="GET /v1/new"):
        document([Route("/v1/new", nothing, methods=["GET"])], LIMITS)


def test_schemas_are_valid_json_schemas() -> None:
    for schema in (s.predict_request(LIMITS), s.infer_request(LIMITS, OUTPUTS), s.STATS):
        Draft202012Validator.check_schema(schema)


def test_responses_match_their_schemas(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()

    def check(method: str, path: str, template: str, status: int = 200, **kw: Any) -> None:
        r = client.request(method, path, **kw)
        assert r.status_code == status, r.text
        responses = doc["paths"][template][method.lower()]["responses"]
        schema = responses.get(str(status), responses["default"])["content"]["application/json"]
        Draft202012Validator(schema["schema"]).validate(r.json())

    check("POST", "/v1/models/toy/predict", "/v1/models/{name}/predict", json={"texts": ["a b"]})
    check("POST", "/v1/models/toy/predict", "/v1/models/{name}/predict", 422, json={"texts": 1})
    v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
    check("POST", "/v2/models/toy/infer", "/v2/models/{name}/infer", json=v2)
    check("GET", "/v2/models/toy/versions/1", "/v2/models/{name}/versions/{version}")
    check("GET", "/v2/models/nope/ready", "/v2/models/{name}/ready", 404)
    for path in ("/v1/models", "/v1/stats", "/v2", "/v2/health/live", "/v2/health/ready"):
        check("GET", path, path)


@settings(max_examples=250, deadline=None, database=None)
@given(st.one_of(ANY, st.dictionaries(st.sampled_from(["texts", "x"]), ANY, max_size=2)))
def test_predict_validator_accepts_exactly_what_its_schema_allows(body: Any) -> None:
    assert accepts(lambda b: parse_predict(b, LIMITS), body) == PREDICT.is_valid(body)


@st.composite
def infer_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """v2 bodies, mostly valid, each with a chance of one field broken or added."""
    texts = draw(st.lists(TEXT, max_size=4))
    data: Any = [[t] if draw(st.booleans()) else t for t in texts]
    shape = [len(texts)] if draw(st.booleans()) else [len(texts), 1]
    tensor: dict[str, Any] = {"name": "text", "datatype": "BYTES", "shape": shape, "data": data}
    body: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        names = st.sampled_from([*OUTPUTS, "x"])
        flags = st.dictionaries(st.just("binary_data"), ANY, max_size=1) | st.none()
        outs = st.fixed_dictionaries({"name": names}, optional={"parameters": flags})
        body["outputs"] = draw(st.lists(outs, max_size=2))
    if draw(st.booleans()):
        body["parameters"] = draw(st.dictionaries(st.just("binary_data_output"), ANY) | ANY)
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from([body, tensor]))
        key = draw(st.sampled_from([*sorted(target), "id", "parameters", "extra"]))
        target[key] = draw(ANY)
    return body


@settings(max_examples=300, deadline=None, database=None)
@given(infer_bodies())
def test_infer_validator_accepts_what_its_schema_allows(body: dict[str, Any]) -> None:
    def parse(raw: bytes) -> Any:
        return parse_infer(raw, LIMITS, header_length=None, outputs=OUTPUTS)

    accepted, valid = accepts(parse, body), INFER.is_valid(body)
    if accepted:
        assert valid, json.dumps(body)
    tensor = body["inputs"][0] if isinstance(body.get("inputs"), list) and body["inputs"] else {}
    counted = (  # what JSON Schema cannot say: the shape counts the data
        isinstance(tensor, dict)
        and isinstance(tensor.get("shape"), list)
        and isinstance(tensor.get("data"), list)
        and tensor["shape"][:1] == [len(tensor["data"])]
        and not (
            isinstance(tensor.get("parameters"), dict)
            and "binary_data_size" in tensor["parameters"]
        )
    )
    if valid and counted:
        assert accepted, json.dumps(body)
