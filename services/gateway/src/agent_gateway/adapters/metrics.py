"""Adapter: request metrics in the Prometheus format (`GET /metrics`).

Requests are counted and timed by method, route *template* (`/v1/agents/{agent_id}`,
never the raw path, so no ids reach the labels) and status. Each replica exposes its
own numbers; Prometheus scrapes every pod and sums them.

Every queue's figures (`run`, `webhook`) are gauges labelled `queue` and `backend`,
refreshed at scrape time (`scrape`): asked of the executor through `QueueWatch`, so
within its short timeout and at most once a second however often the gateway is
scraped. They describe the queues every replica shares, so every gateway replica
exposes the same values: aggregate them with `max`, not `sum`. `agentrt_queue_up` says
whether a queue's broker could be asked (one sample, `{queue="run", backend=""}`, when
the executor itself could not be); a figure not known — the broker does not tell it,
or could not be asked — is left out rather than reported as zero.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from agent_gateway.adapters.asgi import App, Message, Receive, Scope, Send
from agent_gateway.application.system import QueueWatch
from agent_gateway.domain.queues import RUN_QUEUE, Queues

CONTENT_TYPE = CONTENT_TYPE_LATEST
LABELS = ("queue", "backend")
# The figure → (gauge name, help text).
QUEUE_GAUGES = {
    "depth": (
        "agentrt_queue_depth",
        "Messages waiting or in progress, not yet acknowledged.",
    ),
    "pending": ("agentrt_queue_pending", "Messages waiting for a first delivery."),
    "oldest_age_seconds": (
        "agentrt_queue_oldest_age_seconds",
        "Age of the oldest message waiting for its first delivery (0 when none waits).",
    ),
    "redelivered": (
        "agentrt_queue_redelivered",
        "Deliveries in progress that are redeliveries (a replica stopped or stalled).",
    ),
    "dead_letters": (
        "agentrt_queue_dead_letters",
        "Messages given up (dead-lettered) and still kept.",
    ),
}


class QueueGauges(Collector):
    """The queues' figures as last refreshed (`refresh` asks for them again)."""

    def __init__(self, watch: QueueWatch) -> None:
        self._watch = watch
        self._found: Queues | None = None

    async def refresh(self) -> None:
        """Take the watch's current figures (asking the executor when they are stale)."""
        self._found = await self._watch.current()

    def collect(self) -> Iterator[Metric]:
        """`agentrt_queue_up` for every queue, and the figures known."""
        up = GaugeMetricFamily(
            "agentrt_queue_up",
            "1 when the queue's broker answered at the last scrape, else 0.",
            labels=LABELS,
        )
        gauges = {
            figure: GaugeMetricFamily(name, text, labels=LABELS)
            for figure, (name, text) in QUEUE_GAUGES.items()
        }
        found = self._found
        if found is None:  # the executor could not be asked: nor could any queue
            up.add_metric([RUN_QUEUE, ""], 0)
        else:
            for queue in found.queues:
                labels = [queue.name, queue.backend]
                up.add_metric(labels, 1 if queue.available else 0)
                for figure, value in queue.figures().items():
                    if value is not None:
                        gauges[figure].add_metric(labels, value)
        yield up
        yield from (gauge for gauge in gauges.values() if gauge.samples)


class RequestMetrics:
    """The gateway's metrics, in a registry of their own."""

    def __init__(self, queues: QueueWatch | None = None) -> None:
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
        self._queues: QueueGauges | None = None
        if queues is not None:
            self._queues = QueueGauges(queues)
            self.registry.register(self._queues)

    async def scrape(self) -> bytes:
        """The current values in the Prometheus text format, the queues' refreshed."""
        if self._queues is not None:
            await self._queues.refresh()
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
