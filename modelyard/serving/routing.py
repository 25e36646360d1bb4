"""What every route shares before it looks a model up: the body read with a limit, the version a
URL names, and one path for ``/x`` and ``/x/``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.serving.protocol import ProtocolError
from modelyard.versions import VersionRef, parse_ref


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


class CanonicalPath:
    """Answer ``/v1/models/`` as ``/v1/models``: trailing slashes dropped before routing.

    Starlette would instead redirect to an absolute URL built from the client's ``Host`` header
    (``Location: http://evil.example/v1/models``), a redirect any client can aim anywhere.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            canonical = path.rstrip("/") or "/"
            raw = scope.get("raw_path")
            scope = {**scope, "path": canonical}
            if raw is not None:
                scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


def url_version(raw: str | None) -> VersionRef | None:
    """The version a URL names: ASCII digits or an alias name; anything else is a 400."""
    if raw is None:
        return None
    try:
        return parse_ref(raw)
    except ValueError as exc:
        raise ProtocolError(400, str(exc)) from None
