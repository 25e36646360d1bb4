"""``GET /v1/stats``: the server's own metrics as JSON, per model, for the page's live plots.

The figures are the Prometheus ones (:mod:`modelyard.serving.prometheus`), read from the same
registry a scrape reads, so the page and ``/metrics`` never disagree. Counters and histograms are
cumulative, as in Prometheus: a reader takes the difference of two snapshots for rates and
quantiles (the page does, every second). Histogram buckets are cumulative counts at each upper
bound ``le``; the last count is every observation (``+Inf``, left out of ``le``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelyard.serving.prometheus import ServerMetrics
from modelyard.serving.state import ServerState

_REQUESTS = "modelyard_requests"
_HISTOGRAMS = {"modelyard_request_latency_seconds": "latency", "modelyard_batch_size": "batch"}
_QUEUE = "modelyard_queue_depth"


def _model(models: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    found = models.get(name)
    if found is None:
        found = models[name] = {"requests": {}, "queue": 0, "latency": None, "batch": None}
    return found


def _histogram(model: dict[str, Any], key: str) -> dict[str, Any]:
    # summed over the other labels (the endpoint): one histogram per model
    hist = model[key]
    if hist is None:
        hist = model[key] = {"buckets": {}, "sum": 0.0}
    return hist


def stats(metrics: ServerMetrics) -> dict[str, Any]:
    """Cumulative requests by status, latency and batch-size histograms and queue depth, per model.

    Returns:
        ``{"time": unix seconds, "models": {name: {"requests": {status: n}, "queue": n,
        "latency": {"le": [...], "counts": [...], "sum": s} or None, "batch": same or None}}}``;
        requests answered before a model was found (a bad URL, a body that does not parse) are
        under the name ``""``.
    """
    models: dict[str, dict[str, Any]] = {}
    for family in metrics.source().collect():
        key = _HISTOGRAMS.get(family.name)
        for sample in family.samples:
            name = sample.labels.get("model", "")
            if family.name == _REQUESTS and sample.name.endswith("_total"):
                requests = _model(models, name)["requests"]
                status = sample.labels["status"]
                requests[status] = requests.get(status, 0) + int(sample.value)
            elif family.name == _QUEUE:
                _model(models, name)["queue"] += int(sample.value)
            elif key is not None and sample.name.endswith("_bucket"):
                buckets = _histogram(_model(models, name), key)["buckets"]
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif key is not None and sample.name.endswith("_sum"):
                _histogram(_model(models, name), key)["sum"] += sample.value
    for model in models.values():
        for key in _HISTOGRAMS.values():
            hist = model[key]
            if hist is not None:
                bounds = sorted(hist.pop("buckets").items())
                hist["le"] = [le for le, _ in bounds if not math.isinf(le)]
                hist["counts"] = [int(n) for _, n in bounds]
    return {"time": time.time(), "models": dict(sorted(models.items()))}


async def stats_route(state: ServerState, request: Request, served: object) -> Response:
    """``GET /v1/stats``: :func:`stats` of this server."""
    return Response(orjson.dumps(stats(state.metrics)), media_type="application/json")
