"""Prometheus metrics for the server, in a registry of its own (one per app).

Request counters carry model, version and status (499: the client left before its answer); the
histograms carry the model; failed loads are counted per model version. Queue depth and
the number of loaded versions are read live at scrape time, so they never drift.

With ``--workers N`` every worker is a process of its own, and a scrape reaches one of them.
:func:`~modelyard.serving.server.serve` then sets ``PROMETHEUS_MULTIPROC_DIR`` before the
workers start, prometheus-client's multiprocess mode keeps every worker's values in files
there, and ``/metrics`` in any worker answers for all of them: counters and histograms summed,
requests in flight and queue depth summed over live workers, loaded versions the most any worker
has. In that mode the two live gauges are copied from each worker every second
(:meth:`ServerMetrics.refresh_forever`), so a scrape may be that much behind on them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from modelyard.serving.batcher import BatchInfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable
_REFRESH_S = 1.0

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _LiveGauges(Collector):
    def __init__(self, read: Callable[[], tuple[dict[str, int], int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, loaded = self._read()
        queue = GaugeMetricFamily(
            "modelyard_queue_depth", "Texts waiting in the model's queue", labels=["model"]
        )
        for model, n in sorted(depth.items()):
            queue.add_metric([model], n)
        yield queue
        yield GaugeMetricFamily(
            "modelyard_models_loaded", "Model versions loaded and serving", value=loaded
        )


class ServerMetrics:
    """The server's metrics.

    Args:
        live: returns (queue depth in texts by model, number of loaded model versions).
    """

    def __init__(self, live: Callable[[], tuple[dict[str, int], int]]) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelyard_requests",
            "Requests by endpoint, model, version and HTTP status",
            ["endpoint", "model", "version", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelyard_request_latency_seconds",
            "Time from request to response",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "modelyard_queue_time_seconds",
            "Time a request waited before its batch started",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_time = Histogram(
            "modelyard_inference_time_seconds",
            "Time to run one batch (tokenize, infer, postprocess)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelyard_batch_size",
            "Texts per batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "modelyard_requests_in_flight",
            "Requests received and not yet answered, by endpoint",
            ["endpoint"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.load_failures = Counter(
            "modelyard_model_load_failures",
            "Tries to load a model version that failed (each is retried with backoff)",
            ["model", "version"],
            registry=self.registry,
        )
        self._live = live
        if self.multiprocess:  # copied into gauges that every worker writes to its own file
            self.queue_depth = Gauge(
                "modelyard_queue_depth",
                "Texts waiting in the model's queue",
                ["model"],
                registry=self.registry,
                multiprocess_mode="livesum",
            )
            self.models_loaded = Gauge(
                "modelyard_models_loaded",
                "Model versions loaded and serving",
                registry=self.registry,
                multiprocess_mode="livemax",
            )
        else:
            self.registry.register(_LiveGauges(live))
        # labels() takes a lock and a dict lookup; cache the children on the hot path
        self._request_children: dict[tuple[str, str, str, str], Counter] = {}
        self._latency_children: dict[tuple[str, str], Histogram] = {}
        # per model: (batch size, inference time, queue time) children
        self._batch_children: dict[str, tuple[Histogram, Histogram, Histogram]] = {}

    def observe_request(
        self, endpoint: str, model: str, version: str, status: int, seconds: float
    ) -> None:
        """Count one answered request and record its latency."""
        key = (endpoint, model, version, str(status))
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(*key)
        counter.inc()
        lkey = (endpoint, model)
        hist = self._latency_children.get(lkey)
        if hist is None:
            hist = self._latency_children[lkey] = self.latency.labels(*lkey)
        hist.observe(seconds)

    def observe_load_failure(self, model: str, version: int) -> None:
        """Count one failed try to load a model version."""
        self.load_failures.labels(model, str(version)).inc()

    def observe_batch(self, model: str, version: int, info: BatchInfo) -> None:
        """Record one batch: its size, its inference time and each request's queue time.

        Called in the batcher's worker thread (prometheus_client is thread-safe).
        """
        children = self._batch_children.get(model)
        if children is None:
            children = self._batch_children[model] = (
                self.batch_size.labels(model),
                self.inference_time.labels(model),
                self.queue_time.labels(model),
            )
        batch_size, inference_time, queue_time = children
        batch_size.observe(info.size)
        inference_time.observe(info.inference_s)
        for seconds in info.queue_s:
            queue_time.observe(seconds)

    def refresh_live(self) -> None:
        """Multiprocess mode: copy this worker's queue depth and loaded versions to its gauges."""
        if not self.multiprocess:
            return
        depth, loaded = self._live()
        for model, n in depth.items():
            self.queue_depth.labels(model).set(n)
        self.models_loaded.set(loaded)

    async def refresh_forever(self) -> None:
        """Multiprocess mode: :meth:`refresh_live` every second, on the event loop (where the
        repository changes), until cancelled."""
        while True:
            self.refresh_live()
            await asyncio.sleep(_REFRESH_S)

    def source(self) -> CollectorRegistry:
        """What a scrape reads: this process's registry, or every worker's files."""
        if not self.multiprocess:
            return self.registry
        self.refresh_live()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry

    def render(self) -> bytes:
        """The text exposition format: this process's metrics, or every worker's."""
        return generate_latest(self.source())
