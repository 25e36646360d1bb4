"""``GET /openapi.json`` and ``GET /docs``: the API described from the app's own route table.

Every route the app holds must have an :class:`Operation` here (the document refuses to build
otherwise, and ``tests/test_serve_openapi.py`` builds it), and the request bodies are the schemas
of :mod:`modelyard.serving.schemas`, which the validators are tested against. The docs page is
the same document as HTML, rendered here, with no script.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from string import Template
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelyard import __version__
from modelyard.serving import schemas as s
from modelyard.serving.protocol import LABEL_OUTPUT, SCORES_OUTPUT, Limits
from modelyard.serving.state import ServerState
from modelyard.serving.ui import HTML, asset, page_headers

JSON = "application/json"
PROMETHEUS = "text/plain"


@dataclass(frozen=True)
class Operation:
    """One route and method: what it is for, what it takes, what it answers."""

    summary: str
    tag: str
    response: s.Schema | None  # the 200 body; None: ``media`` that is not JSON
    media: str = JSON
    request: str | None = None  # "predict" or "infer": a schema built with the server's limits
    others: dict[str, s.Schema] = field(default_factory=dict)  # more statuses with their bodies
    body: s.Schema | None = None  # a request schema that does not depend on the limits
    error: s.Schema = field(default_factory=lambda: s.ERROR)  # what a 4xx/5xx carries


_V2_PREDICT = "Open Inference Protocol (KServe v2)"
_NOT_READY = {"503": s.READY}
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v1/models/{name}/predict"): Operation(
        "Predict texts with the served version", "v1", s.PREDICT_RESPONSE, request="predict"
    ),
    ("POST", "/v1/models/{name}/versions/{version}/predict"): Operation(
        "Predict texts with a version or alias", "v1", s.PREDICT_RESPONSE, request="predict"
    ),
    ("GET", "/v1/models"): Operation("Every model: versions, aliases, status", "v1", s.LIST_MODELS),
    ("GET", "/v1/stats"): Operation("Live figures per model (cumulative)", "v1", s.STATS),
    ("POST", "/v2/models/{name}/infer"): Operation(
        f"Infer ({_V2_PREDICT}); binary tensor data too", "v2", s.INFER_RESPONSE, request="infer"
    ),
    ("POST", "/v2/models/{name}/versions/{version}/infer"): Operation(
        "Infer with a version or alias", "v2", s.INFER_RESPONSE, request="infer"
    ),
    ("GET", "/v2/health/live"): Operation("Server liveness", "v2", s.LIVE),
    ("GET", "/v2/health/ready"): Operation("Server readiness", "v2", s.READY, others=_NOT_READY),
    ("GET", "/v2"): Operation("Server metadata", "v2", s.SERVER_METADATA),
    ("GET", "/v2/models/{name}"): Operation("Model metadata", "v2", s.MODEL_METADATA),
    ("GET", "/v2/models/{name}/versions/{version}"): Operation(
        "Model version metadata", "v2", s.MODEL_METADATA
    ),
    ("GET", "/v2/models/{name}/ready"): Operation(
        "Model readiness", "v2", s.READY, others=_NOT_READY
    ),
    ("GET", "/v2/models/{name}/versions/{version}/ready"): Operation(
        "Model version readiness", "v2", s.READY, others=_NOT_READY
    ),
    ("POST", "/v1/chat/completions"): Operation(
        "OpenAI chat completion (a generative model); stream: true answers server-sent events",
        "openai",
        s.COMPLETION_RESPONSE,
        body=s.CHAT_REQUEST,
        error=s.OPENAI_ERROR,
    ),
    ("POST", "/v1/completions"): Operation(
        "OpenAI text completion (a generative model); stream: true answers server-sent events",
        "openai",
        s.COMPLETION_RESPONSE,
        body=s.COMPLETION_REQUEST,
        error=s.OPENAI_ERROR,
    ),
    ("GET", "/metrics"): Operation("Prometheus metrics", "server", None, PROMETHEUS),
    ("GET", "/openapi.json"): Operation("This description", "server", s.OPENAPI),
    ("GET", "/"): Operation("The server's page", "page", None, HTML),
    ("GET", "/docs"): Operation("This description as a page", "page", None, HTML),
}
_PARAMETERS = {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
    "version": {
        "type": "string",
        "pattern": "^([1-9][0-9]{0,8}|[A-Za-z][A-Za-z0-9_.-]{0,63})$",
        "description": "a version number or an alias (server, default, ...)",
    },
}


def _content(media: str, schema: s.Schema | None) -> dict[str, Any]:
    return {media: {"schema": schema if schema is not None else {"type": "string"}}}


def _operation(path: str, op: Operation, limits: Limits) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": _content(op.media, op.response)}
    }
    if op.request == "infer":  # binary outputs asked for: JSON header, then the tensors' bytes
        responses["200"]["content"]["application/octet-stream"] = {"schema": {"type": "string"}}
    if op.body is not None:  # OpenAI's routes: stream: true answers server-sent events
        responses["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    for status, body in op.others.items():
        responses[status] = {"description": "not ready", "content": _content(JSON, body)}
    responses["default"] = {"description": "an error", "content": _content(JSON, op.error)}
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": responses}
    names = [p for p in _PARAMETERS if "{" + p + "}" in path]
    if names:
        out["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": _PARAMETERS[p]} for p in names
        ]
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": op.body}}}
    if op.request is not None:
        schema = (
            s.predict_request(limits)
            if op.request == "predict"
            else s.infer_request(limits, [SCORES_OUTPUT, LABEL_OUTPUT])
        )
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": schema}}}
    return out


def document(routes: Iterable[BaseRoute], limits: Limits) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an app's routes.

    Raises:
        LookupError: a route has no :class:`Operation` in :data:`OPERATIONS`.
    """
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        for method in sorted(route.methods or ()):
            if method == "HEAD":  # Starlette adds it to every GET
                continue
            op = OPERATIONS.get((method, route.path))
            if op is None:
                raise LookupError(f"{method} {route.path} has no Operation in serving/openapi.py")
            paths.setdefault(route.path, {})[method.lower()] = _operation(route.path, op, limits)
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelyard server", "version": __version__},
        "paths": dict(sorted(paths.items())),
    }


async def openapi_route(state: ServerState, request: Request, served: object) -> Response:
    """``GET /openapi.json``."""
    return Response(orjson.dumps(document(request.app.routes, state.limits)), media_type=JSON)


def _pretty(schema: Any) -> str:
    text = orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode()
    return f"<pre>{html.escape(text)}</pre>"


def docs_html(doc: dict[str, Any]) -> str:
    """The document as a page: one section per route and method."""
    parts = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get(JSON, {}).get("schema")
            parts.append(
                f'<section><h2><span class="m">{method.upper()}</span> {html.escape(path)}</h2>'
                f"<p>{html.escape(op['summary'])}</p>"
                + (
                    f"<details><summary>request body</summary>{_pretty(body)}</details>"
                    if body
                    else ""
                )
                + "".join(
                    f"<details><summary>{status} {html.escape(', '.join(r['content']))}</summary>"
                    f"{_pretty(next(iter(r['content'].values()))['schema'])}</details>"
                    for status, r in op["responses"].items()
                )
                + "</section>"
            )
    style = asset("docs.css")
    return Template(asset("docs.html").text).substitute(
        version=html.escape(__version__), style=style.text, body="".join(parts)
    )


async def docs_route(state: ServerState, request: Request, served: object) -> Response:
    """``GET /docs``: :func:`docs_html` of this server's document."""
    text = docs_html(document(request.app.routes, state.limits))
    style = asset("docs.css").csp
    csp = f"default-src 'none'; style-src {style}; img-src data:; frame-ancestors 'none'"
    return Response(text, media_type=HTML, headers=page_headers(csp))
