"""The transport layer: small Starlette routes over the repository and its batchers.

Routes only parse, look up, submit and encode; the batcher and the runtime do the work. Every
error is a JSON ``{"error": "..."}`` with a 4xx/5xx status: only a request that cannot be parsed
is a 4xx (a :class:`ProtocolError`, an unknown model or version, a request with more texts than the
whole queue holds: 413); overload, a model that failed to
load and a draining version are 503 and a request that waited too long is 504, with Retry-After; any
other failure (one raised inside inference included) is a 500 with a generic message, the
traceback going to the log only. A client that leaves mid-body, or before its answer is written,
gets no answer and is counted as status 499: the metrics count what was sent. A path with a
trailing slash is answered as the path without it (never a redirect built from ``Host``).

A handler reads the whole body before it looks the model up, so a slow upload that spans a
version swap is answered by the version served when it has arrived. Wherever a URL takes a
version it also takes an alias (``/v2/models/m/versions/server/infer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelyard import __version__
from modelyard.config import ServeConfig
from modelyard.serving.auth import APIKeyMiddleware, read_api_keys
from modelyard.serving.batcher import (
    BatcherClosedError,
    DynamicBatcher,
    QueueFullError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from modelyard.serving.generation import GenerationMetrics, GenerationQueue
from modelyard.serving.inference import (
    Loader,
    TextResult,
    check_providers,
    default_loader,
    generator_settings,
)
from modelyard.serving.openai_api import completions_handler, model_list, openai_error
from modelyard.serving.openai_protocol import CHAT_PATH, COMPLETIONS_PATH, OPENAI_PATHS
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
from modelyard.serving.repository import (
    ModelEntry,
    ModelNotFoundError,
    ModelRepository,
    ModelUnavailableError,
    ModelVersion,
)
from modelyard.serving.routing import CanonicalPath, read_body, url_version
from modelyard.tasks import get_task

log = logging.getLogger("modelyard.serving")

JSON = "application/json"
RETRY_AFTER_S = "1"
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection; metrics only


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
        self.started = time.time()


Handler = Callable[[Request, _Served], Awaitable[Response]]
ErrorShape = Callable[..., Response]


class _Endpoint:
    """A route's ASGI app: run the handler, map every failure to a JSON error, send the answer,
    and count what was sent (a client gone before its answer is a 499, not the status it missed).
    """

    def __init__(
        self, state: ServerState, endpoint: str, handler: Handler, error: ErrorShape = _error
    ) -> None:
        self.state = state
        self.endpoint = endpoint
        self.handler = handler
        self.error = error  # the route's error shape (OpenAI's on its routes)
        self.in_flight = state.metrics.in_flight.labels(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        request = Request(scope, receive, send)
        served = _Served()
        self.in_flight.inc()
        try:
            response = await self.answer(request, served)
        finally:
            self.in_flight.dec()
        status = response.status_code
        try:
            await response(scope, receive, send)
        except (ClientDisconnect, OSError):  # ASGI 2.4: the client closed before the answer
            status = CLIENT_CLOSED
        self.state.metrics.observe_request(
            self.endpoint, served.model, served.version, status, time.perf_counter() - t0
        )

    async def answer(self, request: Request, served: _Served) -> Response:
        try:
            return await self.handler(request, served)
        except ProtocolError as exc:
            return self.error(exc.status, exc.message)
        except ModelNotFoundError as exc:
            return self.error(404, str(exc))
        except ModelUnavailableError as exc:
            retry = str(math.ceil(exc.retry_after_s))
            return self.error(503, str(exc), {"Retry-After": retry})
        except RequestTooLargeError as exc:  # no Retry-After: the same request never fits
            return self.error(413, str(exc))
        except (QueueFullError, BatcherClosedError) as exc:
            return self.error(503, str(exc), {"Retry-After": RETRY_AFTER_S})
        except RequestTimeoutError as exc:  # waited out its time in a busy queue: back off too
            return self.error(504, f"request timed out: {exc}", {"Retry-After": RETRY_AFTER_S})
        except ClientDisconnect:  # nobody to answer; not a server error
            return self.error(CLIENT_CLOSED, "client disconnected")
        except Exception:  # a bug or an inference failure: the log has the traceback
            where = f" in model {served.model} version {served.version}" if served.model else ""
            log.exception("%s %s failed%s", request.method, request.url.path, where)
            return self.error(500, f"internal server error{where}; see the server log")


def _lookup(state: ServerState, request: Request, served: _Served) -> ModelVersion:
    params = request.path_params
    mv = state.repo.get(params["name"], url_version(params.get("version")))
    served.model, served.version = mv.name, str(mv.version)
    return mv


def _scorer(mv: ModelVersion) -> DynamicBatcher[str, TextResult]:
    if isinstance(mv.batcher, GenerationQueue):
        what = "POST /v1/chat/completions or /v1/completions"
        raise ProtocolError(400, f"model {mv.name!r} is generative: {what} with its name")
    return mv.batcher


# ------------------------------------------------------------------------------------- v1
async def _predict(state: ServerState, request: Request, served: _Served) -> Response:
    body = await read_body(request, state.settings.max_body_bytes)
    texts = parse_predict(body, state.limits)
    mv = _lookup(state, request, served)  # after the body: a slow upload may span a swap
    name, version = mv.name, mv.version

    def encode(results: list[TextResult]) -> bytes:  # runs in the batch's worker thread
        return orjson.dumps(
            {
                "model": name,
                "version": version,
                "predictions": [r.prediction.to_dict() for r in results],
            }
        )

    body = await _scorer(mv).submit_with(texts, encode, state.settings.timeout_s)
    return Response(body, media_type=JSON)


def _model_status(entry: ModelEntry) -> dict[str, Any]:
    """What ``/v1/models`` and v2 metadata say beyond the protocol: aliases, served, failures."""
    out: dict[str, Any] = {"served": entry.served, "aliases": dict(sorted(entry.aliases.items()))}
    if entry.target is not None and entry.target != entry.served:
        out["wanted"] = entry.target  # the alias names a version that does not load (yet)
    if entry.failed:
        out["failed"] = {str(v): f.error for v, f in sorted(entry.failed.items())}
    return out


async def _list_models(state: ServerState, request: Request, served: _Served) -> Response:
    models = []
    for name, entry in sorted(state.repo.models.items()):
        mv = entry.versions.get(entry.served) if entry.served is not None else None
        models.append(
            {
                "name": name,
                **_model_status(entry),
                "versions": sorted(entry.versions),
                "available": entry.available,
                "ready": mv is not None,
                "task": mv.predictor.task if mv else None,
                "labels": list(mv.predictor.labels) if mv else None,
            }
        )
    # OpenAI's list shape beside modelyard's: "data" holds the generative models
    data = model_list(state.repo.models, state.started)
    return _json({"models": models, "object": "list", "data": data})


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
    status = _model_status(entry)
    status["served"] = str(entry.served) if entry.served is not None else None
    return _json({**meta, **status})


async def _model_ready(state: ServerState, request: Request, served: _Served) -> Response:
    try:
        mv = _lookup(state, request, served)
    except ModelUnavailableError as exc:  # a broken model is reported here, not by the server
        return _json({"name": request.path_params["name"], "ready": False, "error": str(exc)}, 503)
    ready = not mv.batcher.closed and not state.repo.stopping
    return _json({"name": mv.name, "ready": ready}, 200 if ready else 503)


async def _infer(state: ServerState, request: Request, served: _Served) -> Response:
    body = await read_body(request, state.settings.max_body_bytes)
    mv = _lookup(state, request, served)  # after the body: a slow upload may span a swap
    _scorer(mv)
    req = parse_infer(
        body,
        state.limits,
        header_length=request.headers.get(BINARY_HEADER),
        outputs=_outputs(mv),
    )
    name, version, num_scores = mv.name, str(mv.version), mv.num_scores
    task = get_task(mv.predictor.task)

    def encode(results: list[TextResult]) -> EncodedResponse:  # runs in the worker thread
        if results:
            scores = np.stack([r.scores for r in results]).astype(np.float32, copy=False)
        else:
            scores = np.zeros((0, num_scores), dtype=np.float32)
        labels = [task.response_label(r.prediction) for r in results]
        return encode_infer_response(
            model_name=name, model_version=version, request=req, scores=scores, labels=labels
        )

    encoded = await _scorer(mv).submit_with(req.texts, encode, state.settings.timeout_s)
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
        or functools.partial(
            default_loader,
            intra_op_threads=settings.intra_op_threads,
            providers=check_providers(settings.providers),
            generation=generator_settings(settings),
        ),
        alias=settings.alias,
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue=settings.max_queue,
        poll_s=settings.poll_s,
        on_batch=metrics.observe_batch,
        on_load_failure=metrics.observe_load_failure,
        generation=functools.partial(
            GenerationQueue,
            max_waiting=settings.generation_max_waiting,
            metrics=GenerationMetrics(metrics.registry),
        ),
    )
    state = ServerState(repository, settings, metrics)

    def route(path: str, endpoint: str, handler: Any, method: str) -> Route:
        bound: Handler = functools.partial(handler, state)  # no extra coroutine per request
        return Route(path, _Endpoint(state, endpoint, bound), methods=[method])

    def openai(path: str, endpoint: str, chat: bool) -> Route:
        handler = completions_handler(repository, settings, chat=chat)
        return Route(path, _Endpoint(state, endpoint, handler, openai_error), methods=["POST"])

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    # Starlette tries routes in order (a regex each) and the paths are disjoint, so the hot
    # inference routes go first.
    routes = [
        route("/v1/models/{name}/predict", "predict", _predict, "POST"),
        openai(CHAT_PATH, "chat_completions", chat=True),
        openai(COMPLETIONS_PATH, "completions", chat=False),
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
        refresh = asyncio.create_task(metrics.refresh_forever()) if metrics.multiprocess else None
        try:
            yield
        finally:
            if refresh is not None:
                refresh.cancel()
            await repository.stop()

    middleware = [Middleware(CanonicalPath)]
    if settings.api_key_file:
        middleware.append(Middleware(APIKeyMiddleware, keys=read_api_keys(settings.api_key_file)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        shape = openai_error if request.url.path in OPENAI_PATHS else _error
        return shape(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.router.redirect_slashes = False  # CanonicalPath answers them; never redirect to Host
    app.state.server = state
    return app
