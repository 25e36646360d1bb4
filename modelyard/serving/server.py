"""Run the app on uvicorn (uvloop + httptools when installed): ``serve(repo, settings)``.

uvicorn gives graceful shutdown for free: on SIGINT/SIGTERM it stops accepting connections,
waits for in-flight requests, then runs the app's lifespan shutdown, which drains every batcher.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from modelyard.config import ServeConfig
from modelyard.errors import ConfigError
from modelyard.serving.app import create_app
from modelyard.serving.auth import read_api_keys

_ENV = "MODELYARD_SERVE_ARGS"


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

    settings = settings or ServeConfig()
    root = Path(repo)
    if not root.is_dir():
        raise ConfigError(f"{root}: model repository not found")
    if settings.api_key_file:
        read_api_keys(settings.api_key_file)  # fail before starting workers
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,  # one log line per request costs more than the request itself
        lifespan="on",
        # Let in-flight requests finish: they end within the request timeout.
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
    )
    _exit_cleanly_on_sigterm()
    _tune_gc()
    if settings.workers > 1:
        # Worker processes import the app by name; hand them the settings through the env.
        os.environ[_ENV] = json.dumps({"repo": str(root), "settings": settings.model_dump()})
        uvicorn.run(
            "modelyard.serving.server:app_from_env",
            factory=True,
            workers=settings.workers,
            **common,
        )
    else:
        uvicorn.run(create_app(str(root), settings), **common)


def _tune_gc() -> None:
    # Every request allocates a few hundred short-lived objects; with the default thresholds the
    # collector runs every few requests and now and then walks every module and model object
    # (tens of ms: the p99). Freeze what is loaded so far and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _exit_cleanly_on_sigterm() -> None:
    # uvicorn drains on SIGTERM, then re-raises the signal with the handler found at start; make
    # that handler a normal exit so a graceful stop reports status 0, not "killed by SIGTERM".
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def app_from_env() -> Starlette:
    """App factory for uvicorn worker processes (reads what :func:`serve` put in the env)."""
    args = json.loads(os.environ[_ENV])
    return create_app(args["repo"], ServeConfig.model_validate(args["settings"]))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m modelyard.serving REPO [--port 8000 ...]``: every ServeConfig field is a flag."""
    parser = argparse.ArgumentParser(prog="python -m modelyard.serving")
    parser.add_argument("repo", help="model repository directory")
    parser.add_argument("--log-level", default="info")
    for name, info in ServeConfig.model_fields.items():
        kind = type(info.default) if info.default is not None else str
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    args = vars(parser.parse_args(argv))
    repo, log_level = args.pop("repo"), args.pop("log_level")
    settings = ServeConfig(**{k: v for k, v in args.items() if v is not None})
    try:
        serve(repo, settings, log_level=log_level)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
