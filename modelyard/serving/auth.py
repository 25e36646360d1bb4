"""Optional API keys: ``Authorization: Bearer KEY``, compared in constant time.

The key file holds one key per line (UTF-8; a leading byte-order mark, as Windows editors write it,
is dropped); blank lines and lines starting with ``#`` are ignored. Health
endpoints stay open so orchestrators can probe the server without a key.

A browser cannot add a bearer header to a page it opens, so the key is also taken as the
password of HTTP Basic auth (any user name): the page (``/``, ``/docs``) answers 401 with a
``Basic`` challenge, the browser asks for the key once and sends it with the page's own requests.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.errors import ConfigError
from modelyard.serving import openai_protocol
from modelyard.serving.protocol import error_body

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
PAGE_PATHS = frozenset({"/", "/docs"})  # a browser opens these: challenge with Basic


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


def presented_key(authorization: bytes) -> bytes:
    """The key an ``Authorization`` value carries: ``Bearer KEY``, or ``Basic`` with the key as
    the password; ``b""`` when it carries none."""
    scheme, _, token = authorization.partition(b" ")
    token = token.strip()
    if scheme.lower() == b"bearer":
        return token
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return b""
        return decoded.partition(b":")[2]
    return b""


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
                presented = presented_key(value)
                break
        if presented and key_matches(presented, self.keys):
            await self.app(scope, receive, send)
            return
        message = "missing or invalid API key (use Authorization: Bearer KEY)"
        if scope["path"] in openai_protocol.OPENAI_PATHS:  # OpenAI's error shape on its routes
            body = openai_protocol.error_body(401, message)
        else:
            body = error_body(message)
        scheme = b"Basic" if scope["path"] in PAGE_PATHS else b"Bearer"
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", scheme + b' realm="modelyard"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
