"""The transport layer: small Starlette routes over the repository and its batchers.

Routes only parse, look up, submit and encode; the batcher and the runtime do the work. Every
error is a JSON ``{"error": "..."}`` with a 4xx/5xx status: client mistakes are 4xx, overload is
503 with Retry-After, a request that waited too long is 504.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard import __version__
from modelyard.config import ServeConfig
from modelyard.serving.auth import APIKeyMiddleware, read_api_keys
from modelyard.serving.batcher import BatcherClosedError, QueueFullError, RequestTimeoutError
from modelyard.serving.inference import Loader, TextResult, default_loader
from modelyard.serving.prometheus import CONTENT_TYPE, ServerMetrics
from modelyard.serving.protocol import (
    BINARY_HEADER,
    LABEL_OUTPUT,
    SCORES_OUTPUT,
    EncodedResponse,
    Limits,
    ProtocolError,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer,
    parse_predict,
)
from modelyard.serving.repository import ModelNotFoundError, ModelRepository, ModelVersion

JSON = "application/json"
RETRY_AFTER_S = "1"


class _Served:
    """What a handler hands back to :func:`_answer` for the metrics labels."""

    def __init__(self) -> None:
        self.model = ""
        self.version = ""


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type=JSON)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, headers=headers, media_type=JSON)


class ServerState:
    """Everything the routes share: settings, repository, metrics, limits."""

    def __init__(self, repo: ModelRepository, settings: ServeConfig, metrics: ServerMetrics):
        self.repo = repo
        self.settings = settings
        self.metrics = metrics
        self.limits = Limits(max_texts=settings.max_texts, max_text_chars=settings.max_text_chars)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ProtocolError(400, "Content-Length is not an integer") from None
        if size > limit:
            raise ProtocolError(413, f"request body too large: {size} bytes (at most {limit})")
        # The server delivers exactly Content-Length bytes: read them in one go.
        return await request.body()
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ProtocolError(413, f"request body too large (at most {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


Handler = Callable[[Request, _Served], Awaitable[Response]]


def _route(state: ServerState, endpoint: str, handler: Handler) -> Callable[..., Any]:
    """Wrap a handler: map every failure to a JSON error and record the request's metrics."""

    async def run(request: Request) -> Response:
        t0 = time.perf_counter()
        served = _Served()
        try:
            response = await handler(request, served)
        except ProtocolError as exc:
            response = _error(exc.status, exc.message)
        except ModelNotFoundError as exc:
            response = _error(404, str(exc))
        except ValueError as exc:  # a malformed version in the URL
            response = _error(400, str(exc))
        except (QueueFullError, BatcherClosedError) as exc:
            response = _error(503, str(exc), {"Retry-After": RETRY_AFTER_S})
        except RequestTimeoutError as exc:
            response = _error(504, f"request timed out: {exc}")
        except Exception as exc:  # an inference failure: the request still gets an answer
            response = _error(500, f"inference failed: {type(exc).__name__}: {exc}")
        state.metrics.observe_request(
            endpoint, served.model, served.version, response.status_code, time.perf_counter() - t0
        )
        return response

    return run


def _lookup(state: ServerState, request: Request, served: _Served) -> ModelVersion:
    params = request.path_params
    mv = state.repo.get(params["name"], params.get("version"))
    served.model, served.version = mv.name, str(mv.version)
    return mv


# ------------------------------------------------------------------------------------- v1
async def _predict(state: ServerState, request: Request, served: _Served) -> Response:
    mv = _lookup(state, request, served)
    body = await read_body(request, state.settings.max_body_bytes)
    texts = parse_predict(body, state.limits)
    name, version = mv.name, mv.version

    def encode(results: list[TextResult]) -> bytes:  # runs in the batch's worker thread
        return orjson.dumps(
            {
                "model": name,
                "version": version,
                "predictions": [r.prediction.to_dict() for r in results],
            }
        )

    body = await mv.batcher.submit_with(texts, encode, state.settings.timeout_s)
    return Response(body, media_type=JSON)


async def _list_models(state: ServerState, request: Request, served: _Served) -> Response:
    models = []
    for name, entry in sorted(state.repo.models.items()):
        latest = entry.versions.get(entry.latest) if entry.latest is not None else None
        models.append(
            {
                "name": name,
                "latest": entry.latest,
                "versions": sorted(entry.versions),
                "available": entry.on_disk,
                "ready": latest is not None,
                "task": latest.predictor.task if latest else None,
                "labels": list(latest.predictor.labels) if latest else None,
            }
        )
    return _json({"models": models})


# ------------------------------------------------------------------------------------- v2
async def _live(state: ServerState, request: Request, served: _Served) -> Response:
    return _json({"live": True})


async def _ready(state: ServerState, request: Request, served: _Served) -> Response:
    ready = state.repo.ready
    return _json({"ready": ready}, 200 if ready else 503)


async def _server_metadata(state: ServerState, request: Request, served: _Served) -> Response:
    return _json(
        {"name": "modelyard", "version": __version__, "extensions": ["binary_tensor_data"]}
    )


def _outputs(mv: ModelVersion) -> list[str]:
    return [SCORES_OUTPUT, LABEL_OUTPUT] if mv.has_labels else [SCORES_OUTPUT]


async def _model_metadata(state: ServerState, request: Request, served: _Served) -> Response:
    mv = _lookup(state, request, served)
    entry = state.repo.models[mv.name]
    meta = model_metadata(mv.name, sorted(entry.versions), mv.num_scores)
    meta["outputs"] = [o for o in meta["outputs"] if o["name"] in _outputs(mv)]
    return _json(meta)


async def _model_ready(state: ServerState, request: Request, served: _Served) -> Response:
    mv = _lookup(state, request, served)
    ready = not mv.batcher.closed and not state.repo.stopping
    return _json({"name": mv.name, "ready": ready}, 200 if ready else 503)


async def _infer(state: ServerState, request: Request, served: _Served) -> Response:
    mv = _lookup(state, request, served)
    body = await read_body(request, state.settings.max_body_bytes)
    req = parse_infer(
        body,
        state.limits,
        header_length=request.headers.get(BINARY_HEADER),
        outputs=_outputs(mv),
    )
    name, version, num_scores = mv.name, str(mv.version), mv.num_scores

    def encode(results: list[TextResult]) -> EncodedResponse:  # runs in the worker thread
        if results:
            scores = np.stack([r.scores for r in results]).astype(np.float32, copy=False)
        else:
            scores = np.zeros((0, num_scores), dtype=np.float32)
        labels = [r.prediction.label or "" for r in results]
        return encode_infer_response(
            model_name=name, model_version=version, request=req, scores=scores, labels=labels
        )

    encoded = await mv.batcher.submit_with(req.texts, encode, state.settings.timeout_s)
    return Response(encoded.body, headers=encoded.headers, media_type=encoded.media_type)


async def _metrics(state: ServerState, request: Request, served: _Served) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


# ------------------------------------------------------------------------------------ app
def create_app(
    repo: str,
    settings: ServeConfig | None = None,
    *,
    loader: Loader | None = None,
    poll: bool = True,
) -> Starlette:
    """Build the ASGI app over a model repository.

    Models are loaded and warmed in the app's lifespan startup, so a server (uvicorn) accepts no
    request before every model is ready; shutdown drains every queue.

    Args:
        repo: the repository directory (``models/``): ``NAME/VERSION/manifest.json``.
        settings: limits, batching and auth (the config's ``serve:`` section).
        loader: loads one version directory into a predictor (default: ``modelyard.runtime``;
            tests pass a toy).
        poll: watch the repository for new versions (hot reload).

    Returns:
        A Starlette app; ``app.state.server`` is the :class:`ServerState`.

    Raises:
        ConfigError: the API key file is missing or empty.
    """
    settings = settings or ServeConfig()

    def live_gauges() -> tuple[dict[str, int], int]:
        depth: dict[str, int] = {}
        loaded = 0
        for name, entry in repository.models.items():
            depth[name] = sum(mv.batcher.queued for mv in entry.versions.values())
            loaded += len(entry.versions)
        return depth, loaded

    metrics = ServerMetrics(live_gauges)
    repository = ModelRepository(
        repo,
        loader=loader
        or functools.partial(default_loader, intra_op_threads=settings.intra_op_threads),
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue=settings.max_queue,
        poll_s=settings.poll_s,
        on_batch=metrics.observe_batch,
    )
    state = ServerState(repository, settings, metrics)

    def route(path: str, endpoint: str, handler: Any, method: str) -> Route:
        bound: Handler = functools.partial(handler, state)  # no extra coroutine per request
        return Route(path, _route(state, endpoint, bound), methods=[method])

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    # Starlette tries routes in order (a regex each) and the paths are disjoint, so the hot
    # inference routes go first.
    routes = [
        route("/v1/models/{name}/predict", "predict", _predict, "POST"),
        route(model + "/infer", "infer", _infer, "POST"),
        route("/v1/models/{name}/versions/{version}/predict", "predict", _predict, "POST"),
        route(version + "/infer", "infer", _infer, "POST"),
        route("/v2/health/live", "live", _live, "GET"),
        route("/v2/health/ready", "ready", _ready, "GET"),
        route("/v2", "server_metadata", _server_metadata, "GET"),
        route(model, "model_metadata", _model_metadata, "GET"),
        route(version, "model_metadata", _model_metadata, "GET"),
        route(model + "/ready", "model_ready", _model_ready, "GET"),
        route(version + "/ready", "model_ready", _model_ready, "GET"),
        route("/v1/models", "list_models", _list_models, "GET"),
        route("/metrics", "metrics", _metrics, "GET"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await repository.start(poll=poll)
        try:
            yield
        finally:
            await repository.stop()

    middleware = []
    if settings.api_key_file:
        middleware.append(Middleware(APIKeyMiddleware, keys=read_api_keys(settings.api_key_file)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.state.server = state
    return app
