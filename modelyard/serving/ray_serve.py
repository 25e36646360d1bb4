"""The same app on Ray Serve: replicas, autoscaling bounds, Ray's HTTP proxy in front.

Every replica builds, in its own process, the very app ``modelyard serve`` runs
(:func:`create_app`: the same endpoints, auth and limits, a dynamic batcher per model version,
hot reload), so each replica batches what Ray's proxy sends it. The repository's readiness
(``/v2/health/ready``) is the replica's health check: Ray replaces a replica that stays unready.

Two ways in:

- ``modelyard serve models/ --ray --replicas 2 [--max-replicas 4]`` starts Ray on this machine
  (or joins the cluster ``RAY_ADDRESS`` names), deploys, and serves until Ctrl-C or SIGTERM;
- on a Ray cluster managed by hand, Ray's own command with :func:`build_app`, the application
  builder: ``serve run modelyard.serving.ray_serve:build_app repo=models replicas=2`` (every
  ``serve:`` setting is a ``key=value`` argument; ``config=FILE`` reads that config's section).

Ray is imported only inside the functions here: ``pip install 'modelyard[ray]'``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.config import ServeConfig, load_config
from modelyard.errors import ConfigError
from modelyard.logs import setup_logging
from modelyard.serving.app import create_app
from modelyard.serving.auth import read_api_keys

if TYPE_CHECKING:
    from ray.serve import Application

APP_NAME = "modelyard"
REPLICA_HEADER = "X-Modelyard-Replica"
INSTALL_HINT = "pip install 'modelyard[ray]'"
log = logging.getLogger("modelyard.serving")


class ModelyardReplica:
    """One Ray Serve replica: the modelyard app over a model repository.

    Ray builds the ASGI app in the replica's process (``__serve_build_asgi_app__``) and runs its
    lifespan there, so models load and warm before the replica takes a request.
    """

    def __init__(self, repo: str, settings: dict[str, Any]) -> None:
        self.repo = repo
        self.settings = ServeConfig.model_validate(settings)
        self.starlette: Starlette | None = None

    def __serve_build_asgi_app__(self) -> Starlette:
        if not logging.getLogger("modelyard").handlers:
            setup_logging("info")
        app = create_app(self.repo, self.settings)
        # which replica answered, as in Ray's logs and `serve status` (no other way to tell)
        app.add_middleware(ReplicaHeader, replica=_replica_id())
        self.starlette = app
        return app

    async def check_health(self) -> None:
        """Ray's health check: the repository's readiness (raising marks the replica unhealthy)."""
        if self.starlette is None or not self.starlette.state.server.repo.ready:
            raise RuntimeError(f"{self.repo}: model repository is not ready")


class ReplicaHeader:
    """ASGI middleware: every HTTP response carries ``X-Modelyard-Replica: ID``."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


def _replica_id() -> str:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except RayServeException:  # built outside a replica
        return f"pid-{os.getpid()}"


def _import_serve() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise ConfigError(f"Ray Serve is not installed: {INSTALL_HINT}") from None
    return serve


def deployment_options(settings: ServeConfig) -> dict[str, Any]:
    """Ray Serve deployment options from the ``serve:`` settings.

    ``replicas`` replicas; with ``max_replicas`` above it, autoscaling between the two, aiming
    at one full batch in flight per replica.
    """
    batch = settings.max_batch_size
    options: dict[str, Any] = {
        "name": APP_NAME,
        # Ray sends a replica at most this many requests at once; the batcher needs a batch's
        # worth waiting while the previous batch runs (Ray's default, 5, would cap batches at 5).
        "max_ongoing_requests": 2 * batch,
        # the rest wait in the proxy, up to the queue bound; beyond it Ray answers 503
        "max_queued_requests": settings.max_queue,
        "graceful_shutdown_timeout_s": settings.timeout_s + 5,  # in-flight requests finish
        "ray_actor_options": {"num_cpus": settings.intra_op_threads},
    }
    if settings.max_replicas is not None and settings.max_replicas > settings.replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.replicas,
            "initial_replicas": settings.replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": batch,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def application(repo: str | Path, settings: ServeConfig | None = None) -> Application:
    """The Ray Serve application over ``repo`` (deploy it with ``serve.run``).

    Raises:
        ConfigError: Ray Serve is not installed, the repository does not exist or the API key
            file is unusable.
    """
    serve = _import_serve()
    settings = settings or ServeConfig()
    root = Path(repo).resolve()  # replicas may start in another working directory
    if not root.is_dir():
        raise ConfigError(f"{repo}: model repository not found")
    if settings.api_key_file:
        read_api_keys(settings.api_key_file)  # fail here, not in every replica
    deployment = serve.deployment(**deployment_options(settings))(serve.ingress()(ModelyardReplica))
    return deployment.bind(str(root), settings.model_dump())


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for Ray's CLI: ``serve run modelyard.serving.ray_serve:build_app``.

    Args:
        args: ``repo=DIR`` (required), ``config=FILE`` (its ``serve:`` section) and any
            ``serve:`` setting as ``key=value`` (``replicas=2 max_replicas=4 max_batch_size=32``).

    Raises:
        ConfigError: no ``repo``, or a setting that is unknown or out of range.
    """
    rest = dict(args)
    repo = rest.pop("repo", None)
    if not repo:
        raise ConfigError("build_app: repo=DIR is required (the model repository, e.g. models)")
    config = rest.pop("config", None)
    base = load_config(config).serve if config else ServeConfig()
    return application(repo, ServeConfig.from_settings({**base.model_dump(), **rest}))


def deploy(repo: str | Path, settings: ServeConfig) -> None:
    """Start Serve's HTTP proxy on the settings' host and port and deploy onto the current Ray.

    Returns once every replica has loaded its models (``serve.run`` waits for it).
    """
    serve = _import_serve()
    app = application(repo, settings)
    serve.start(
        http_options={
            "host": settings.host,
            "port": settings.port,
            "request_timeout_s": settings.timeout_s + 5,  # the app answers 504 before this
        }
    )
    log.info("deploying %s on Ray Serve (%s)", repo, _replicas(settings))
    serve.run(app, name=APP_NAME, route_prefix="/")  # waits until every replica is up


def serve_on_ray(repo: str | Path, settings: ServeConfig, *, log_level: str = "info") -> None:
    """``modelyard serve --ray``: start (or join) Ray, deploy, serve until Ctrl-C or SIGTERM.

    On the way out the app is deleted (replicas drain their queues), and Serve and Ray are shut
    down when this call started them.

    Raises:
        ConfigError: Ray Serve is not installed, ``workers`` is above 1, or the repository or API
            key file is unusable.
    """
    serve = _import_serve()
    import ray

    if settings.workers > 1:
        raise ConfigError("--workers does not apply with --ray; use --replicas N")
    application(repo, settings)  # fail on a bad repository before starting Ray
    joined = bool(os.environ.get("RAY_ADDRESS"))  # a cluster someone else runs: leave it up
    local: dict[str, Any] = {} if joined else {"include_dashboard": False}
    if not joined and settings.host in ("127.0.0.1", "localhost"):
        local["_node_ip_address"] = "127.0.0.1"  # Ray's own ports on loopback too
    ray.init(logging_level=getattr(logging, log_level.upper(), logging.INFO), **local)
    stop = _stop_on_signals()  # after ray.init, which installs its own SIGTERM handler
    try:
        deploy(repo, settings)
        print(
            f"serving {repo} on Ray Serve at http://{settings.host}:{settings.port} "
            f"({_replicas(settings)}); Ctrl-C to stop",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
        log.info("stopping Ray Serve")
    finally:
        if joined:
            serve.delete(APP_NAME)
        else:  # this call started Ray: take it all down
            serve.shutdown()
            ray.shutdown()


def _replicas(settings: ServeConfig) -> str:
    if settings.max_replicas is not None and settings.max_replicas > settings.replicas:
        return f"{settings.replicas} to {settings.max_replicas} replicas, autoscaled"
    return f"{settings.replicas} replica{'s' if settings.replicas > 1 else ''}"


def _stop_on_signals() -> threading.Event:
    """An event SIGINT or SIGTERM sets; a second signal interrupts (KeyboardInterrupt).

    Installed before deploying, so a signal as soon as the app answers is a clean stop too.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    return stop
