"""Optional API keys: ``Authorization: Bearer KEY``, compared in constant time.

The key file holds one key per line (UTF-8; a leading byte-order mark, as Windows editors write it,
is dropped); blank lines and lines starting with ``#`` are ignored. Health
endpoints stay open so orchestrators can probe the server without a key.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.errors import ConfigError
from modelyard.serving import openai_protocol
from modelyard.serving.protocol import error_body

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def read_api_keys(path: str | Path) -> list[bytes]:
    """Read API keys from a file.

    Returns:
        The keys as bytes.

    Raises:
        ConfigError: the file is missing, unreadable, or holds no key.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read API key file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: API key file is not UTF-8 (byte {exc.start})") from None
    keys = [ln.strip().encode() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"{p}: API key file holds no key")
    return keys


def key_matches(presented: bytes, keys: list[bytes]) -> bool:
    """Whether ``presented`` equals one of ``keys``; every key is compared, in constant time."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key)
    return found


class APIKeyMiddleware:
    """ASGI middleware: 401 with a JSON error unless a valid bearer key is given.

    Args:
        app: the wrapped app.
        keys: accepted keys.
    """

    def __init__(self, app: ASGIApp, keys: list[bytes]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
                break
        if presented and key_matches(presented, self.keys):
            await self.app(scope, receive, send)
            return
        message = "missing or invalid API key (use Authorization: Bearer KEY)"
        if scope["path"] in openai_protocol.OPENAI_PATHS:  # OpenAI's error shape on its routes
            body = openai_protocol.error_body(401, message)
        else:
            body = error_body(message)
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="modelyard"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
