"""Adapter: request metrics in the Prometheus format (`GET /metrics`).

Requests are counted and timed by method, route *template* (`/v1/agents/{agent_id}`,
never the raw path, so no ids reach the labels) and status. Each replica exposes its
own numbers; Prometheus scrapes every pod and sums them.

The run queue's figures are gauges refreshed at scrape time (`scrape`): asked of the
executor through `RunQueueWatch`, so within its short timeout and at most once a
second however often the gateway is scraped. They describe the one queue every
replica shares, so every gateway replica exposes the same values: aggregate them with
`max`, not `sum`. `agentrt_run_queue_up` says whether they could be asked; when not,
the figures are left out rather than reported as zeros.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from agent_gateway.adapters.asgi import App, Message, Receive, Scope, Send
from agent_gateway.application.system import RunQueueWatch
from agent_gateway.domain.run_queue import RunQueue

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Gauge name → (the figure, help text).
QUEUE_GAUGES = {
    "agentrt_run_queue_depth": ("depth", "Runs waiting or in progress, not yet acknowledged."),
    "agentrt_run_queue_pending": ("pending", "Runs waiting for a first delivery."),
    "agentrt_run_queue_oldest_age_seconds": (
        "oldest_age_seconds",
        "Age of the oldest run waiting for its first delivery (0 when none waits).",
    ),
    "agentrt_run_queue_redelivered": (
        "redelivered",
        "Deliveries in progress that are redeliveries (a replica stopped or stalled).",
    ),
    "agentrt_run_queue_dead_letters": (
        "dead_letters",
        "Runs given up (dead-lettered) and still kept.",
    ),
}


class RunQueueGauges(Collector):
    """The run queue's figures as last refreshed (`refresh` asks for them again)."""

    def __init__(self, watch: RunQueueWatch) -> None:
        self._watch = watch
        self._figures: RunQueue | None = None

    async def refresh(self) -> None:
        """Take the watch's current figures (asking the executor when they are stale)."""
        self._figures = await self._watch.current()

    def collect(self) -> Iterator[Metric]:
        """`agentrt_run_queue_up`, and the figures when they could be asked."""
        figures = self._figures
        yield GaugeMetricFamily(
            "agentrt_run_queue_up",
            "1 when the executor answered for the run queue at the last scrape, else 0.",
            value=0 if figures is None else 1,
        )
        if figures is None:
            return
        for name, (figure, text) in QUEUE_GAUGES.items():
            yield GaugeMetricFamily(name, text, value=getattr(figures, figure))


class RequestMetrics:
    """The gateway's metrics, in a registry of their own."""

    def __init__(self, run_queue: RunQueueWatch | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "agentrt_gateway_requests",
            "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "agentrt_gateway_request_seconds",
            "Time to answer an HTTP request, by method and route.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self._queue: RunQueueGauges | None = None
        if run_queue is not None:
            self._queue = RunQueueGauges(run_queue)
            self.registry.register(self._queue)

    async def scrape(self) -> bytes:
        """The current values in the Prometheus text format, the run queue's refreshed."""
        if self._queue is not None:
            await self._queue.refresh()
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request."""

    def __init__(self, app: App, *, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the request, then record it under its route template."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", "?"))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.seconds.labels(method, route).observe(time.perf_counter() - started)
