"""``GET /``: the server's page. Its models, a form to try a classifier, live plots.

One HTML answer with the style and the script inlined (``static/``, shipped in the package): no
build step, nothing fetched from elsewhere (the Content-Security-Policy allows only this origin
and the two inlined pieces, by hash). The model table is rendered here, so it reads without the
script; the script adds "try it" (``POST /v1/models/NAME/predict``), the chat with a generative
model (``POST /v1/chat/completions``, streamed, with a stop button) and the live plots (``GET
/v1/stats`` every second).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
from dataclasses import asdict, dataclass, field
from importlib import resources
from string import Template
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelyard import __version__
from modelyard.runtime import Predictor
from modelyard.runtime.generator import Generator
from modelyard.serving.repository import ModelEntry, ModelVersion
from modelyard.serving.state import ServerState
from modelyard.tasks import get_task

HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Asset:
    text: str
    csp: str  # its hash as a CSP source: 'sha256-...'


@dataclass
class ModelRow:
    """What the page says about one model."""

    name: str
    task: str | None = None
    served: int | None = None
    aliases: dict[str, int] = field(default_factory=dict)
    format: str | None = None
    size: int | None = None  # bytes of the served version's files
    status: str = "loading"  # loaded, failed, loading
    reason: str = ""
    labels: list[str] = field(default_factory=list)
    threshold: float | None = None
    answers: str | None = None  # what predict returns: "scores", "value"; None: not tried here
    generates: bool = False  # a generative model: the chat (POST /v1/chat/completions)


@functools.cache
def asset(name: str) -> Asset:
    """A file of ``static/`` and its CSP hash (read once)."""
    text = resources.files("modelyard.serving").joinpath("static", name).read_text("utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return Asset(text, f"'sha256-{digest}'")


def describe(entry: ModelEntry) -> ModelRow:
    """The page's row for one model of the repository."""
    row = ModelRow(entry.name, served=entry.served, aliases=dict(sorted(entry.aliases.items())))
    mv: ModelVersion | None = entry.versions.get(entry.served) if entry.served is not None else None
    if entry.failed:
        row.status = "failed"
        row.reason = "; ".join(f"version {v}: {f.error}" for v, f in sorted(entry.failed.items()))
    if mv is None:
        return row
    if not entry.failed:
        row.status = "loaded"
    task = get_task(mv.predictor.task)
    row.task, row.labels = task.name, list(mv.predictor.labels)
    row.answers = None if task.generative else "scores" if task.has_classes else "value"
    row.generates = task.generative
    if isinstance(mv.predictor, Predictor | Generator):  # a bundle (tests serve toys too)
        manifest = mv.predictor.manifest
        row.format = manifest.format
        row.size = sum(f.size for f in manifest.files.values())
        row.threshold = manifest.postprocess.threshold if not task.generative else None
    return row


def human_size(size: int | None) -> str:
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _cell(text: Any) -> str:
    return f"<td>{html.escape(str(text))}</td>"


def table_row(row: ModelRow) -> str:
    aliases = ", ".join(f"{a} → {v}" for a, v in row.aliases.items()) or "—"
    status = row.status if not row.reason else f"{row.status}: {row.reason}"
    cells = [
        f'<th scope="row">{html.escape(row.name)}</th>',
        _cell(row.task or "—"),
        _cell(row.served if row.served is not None else "—"),
        _cell(aliases),
        _cell(row.format or "—"),
        _cell(human_size(row.size)),
        f'<td class="status {row.status}">{html.escape(status)}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def render(state: ServerState) -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy."""
    rows = [describe(entry) for _, entry in sorted(state.repo.models.items())]
    style, script = asset("page.css"), asset("page.js")
    empty = '<tr><td colspan="7">no model in the repository yet</td></tr>'
    options = "".join(
        f'<option value="{html.escape(r.name)}">{html.escape(r.name)}</option>'
        for r in rows
        if r.answers is not None
    )
    # inside <script type="application/json">: no "</script>" can close it early
    chat_options = "".join(
        f'<option value="{html.escape(r.name)}">{html.escape(r.name)}</option>'
        for r in rows
        if r.generates
    )
    data = orjson.dumps([asdict(r) for r in rows]).decode().replace("<", "\\u003c")
    page = Template(asset("page.html").text).substitute(
        version=html.escape(__version__),
        count=len(rows),
        rows="".join(table_row(r) for r in rows) or empty,
        options=options or '<option value="">no model to try</option>',
        chat_options=chat_options or '<option value="">no generative model</option>',
        data=data,
        style=style.text,
        script=script.text,
    )
    csp = (
        f"default-src 'none'; script-src {script.csp}; style-src {style.csp}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )
    return page, csp


def page_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


async def page(state: ServerState, request: Request, served: object) -> Response:
    """``GET /``: the page (see the module)."""
    text, csp = render(state)
    return Response(text, media_type=HTML, headers=page_headers(csp))
