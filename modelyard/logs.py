"""Logging: readable lines by default, one JSON object per line with ``--log-format json``."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra fields passed with ``extra={...}`` are kept."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the ``modelyard`` logger once, from the CLI (never at import time)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        fmt_text = "%(asctime)s %(levelname)-7s %(message)s"
        handler.setFormatter(logging.Formatter(fmt_text, "%H:%M:%S"))
    root = logging.getLogger("modelyard")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Only records of ``level`` and above from ``name`` meanwhile (by default errors: while
    exporting, torch logs e.g. that torchvision is absent)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
