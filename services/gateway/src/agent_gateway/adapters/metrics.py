"""Adapter: request metrics in the Prometheus format (`GET /metrics`).

Requests are counted and timed by method, route *template* (`/v1/agents/{agent_id}`,
never the raw path, so no ids reach the labels) and status. Each replica exposes its
own numbers; Prometheus scrapes every pod and sums them.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent_gateway.adapters.asgi import App, Message, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RequestMetrics:
    """The gateway's metrics, in a registry of their own."""

    def __init__(self) -> None:
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

    def exposition(self) -> bytes:
        """The current values in the Prometheus text format."""
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
