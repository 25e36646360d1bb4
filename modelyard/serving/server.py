"""Run the app on uvicorn (uvloop + httptools when installed): ``serve(repo, settings)``.

uvicorn gives graceful shutdown for free: on SIGINT/SIGTERM it stops accepting connections,
waits for in-flight requests, then runs the app's lifespan shutdown, which drains every batcher.

Every server process, each of ``--workers N`` included, gets the same setup
(:func:`prepare_process`): the GC tuning, a SIGTERM that ends in a clean exit, and modelyard's
log handler. uvicorn's workers are fresh interpreters that run nothing of ours before they serve
but the logging config uvicorn applies in each of them, so the setup rides on it (a filter
factory in ``log_config``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from starlette.applications import Starlette

from modelyard.config import ServeConfig
from modelyard.config.deploy import add_serve_flags, serve_overrides
from modelyard.errors import ConfigError
from modelyard.logs import setup_logging
from modelyard.serving.app import create_app
from modelyard.serving.auth import read_api_keys
from modelyard.serving.prometheus import MULTIPROCESS_ENV

_ENV = "MODELYARD_SERVE_ARGS"
log = logging.getLogger("modelyard.serving")
_prepared_pid: int | None = None


def serve(
    repo: str | Path, settings: ServeConfig | None = None, *, log_level: str = "info"
) -> None:
    """Serve every model under ``repo`` until interrupted.

    Args:
        repo: the model repository directory (``models/``).
        settings: host, port, batching, limits, workers, API key file (``serve:`` config).
        log_level: uvicorn's log level.

    Raises:
        ConfigError: the repository does not exist or the API key file is unusable.
    """
    import uvicorn

    from modelyard.serving.http import BoundedHttpProtocol, HttpLimits

    settings = settings or ServeConfig()
    root = Path(repo)
    if not root.is_dir():
        raise ConfigError(f"{root}: model repository not found")
    if settings.api_key_file:
        read_api_keys(settings.api_key_file)  # fail before starting workers
    limits = HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
    )
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,  # one log line per request costs more than the request itself
        lifespan="on",
        # Let in-flight requests finish: they end within the request timeout.
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
        log_config=_log_config(log_level),
        # modelyard's HTTP/1.1 connection: JSON protocol errors, a head limit, head and body
        # timeouts, a connection cap (a partial of a module-level class: workers unpickle it).
        http=cast(Any, functools.partial(BoundedHttpProtocol, limits=limits)),
        ws="none",  # no WebSocket route: an Upgrade request is answered as plain HTTP
    )
    if settings.workers > 1:
        # Worker processes import the app by name; hand them the settings through the env.
        os.environ[_ENV] = json.dumps({"repo": str(root), "settings": settings.model_dump()})
        with _multiprocess_metrics():
            uvicorn.run(
                "modelyard.serving.server:app_from_env",
                factory=True,
                workers=settings.workers,
                **common,
            )
    else:
        uvicorn.run(create_app(str(root), settings), **common)


@contextlib.contextmanager
def _multiprocess_metrics() -> Iterator[None]:
    # Every worker writes its metrics to files in one directory, so /metrics in any of them
    # counts all (prometheus-client's multiprocess mode). The workers read the variable when
    # they import prometheus_client, after this; a directory the user set is theirs to keep.
    if os.environ.get(MULTIPROCESS_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="modelyard-metrics-")
    os.environ[MULTIPROCESS_ENV] = path
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_ENV]
        shutil.rmtree(path, ignore_errors=True)


def _log_config(log_level: str) -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    # dictConfig builds every declared filter, in every process uvicorn configures logging in
    config.setdefault("filters", {})["modelyard_process"] = {
        "()": prepare_process,
        "log_level": log_level,
    }
    return config


def prepare_process(log_level: str = "info") -> logging.Filter:
    """Set up this server process once: GC tuning, clean exit on SIGTERM, modelyard's logging.

    Returns:
        A filter that lets everything through (the hook it is called by wants one).
    """
    global _prepared_pid
    if _prepared_pid != os.getpid():
        _prepared_pid = os.getpid()
        if not logging.getLogger("modelyard").handlers:  # the CLI may have set it up already
            setup_logging(log_level)
        _exit_cleanly_on_sigterm()
        _tune_gc()
        log.info(
            "process %d: gc tuned (threshold %s, %d objects frozen); SIGTERM exits cleanly",
            os.getpid(),
            gc.get_threshold(),
            gc.get_freeze_count(),
        )
    return logging.Filter()


def _tune_gc() -> None:
    # Every request allocates a few hundred short-lived objects; with the default thresholds the
    # collector runs every few requests and now and then walks every module and model object
    # (tens of ms: the p99). Freeze what is loaded so far and collect young objects less often.
    # This holds only while a request leaves no reference cycle: at these thresholds an old
    # cycle waits for a full collection, which under load is rare and when idle never comes (the
    # batcher sees to it that a timed-out, cancelled or failed request leaves none).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _exit_cleanly_on_sigterm() -> None:
    # uvicorn drains on SIGTERM, then re-raises the signal with the handler found at start; make
    # that handler a normal exit so a graceful stop reports status 0, not "killed by SIGTERM".
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    log.info("process %d: SIGTERM, exiting cleanly", os.getpid())
    sys.exit(0)


def app_from_env() -> Starlette:
    """App factory for uvicorn worker processes (reads what :func:`serve` put in the env)."""
    args = json.loads(os.environ[_ENV])
    return create_app(args["repo"], ServeConfig.model_validate(args["settings"]))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m modelyard.serving REPO [--port 8000 ...]``: every ServeConfig field is a flag."""
    parser = argparse.ArgumentParser(prog="python -m modelyard.serving")
    parser.add_argument("repo", help="model repository directory")
    parser.add_argument("--log-level", default="info")
    add_serve_flags(parser)
    args = parser.parse_args(argv)
    try:
        settings = ServeConfig.from_settings(serve_overrides(args))
        serve(args.repo, settings, log_level=args.log_level)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
