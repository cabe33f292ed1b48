"""OpenTelemetry bootstrap: off unless an exporter is configured.

With `otel_exporter=none` no tracer provider is installed: the API's no-op
tracer costs almost nothing, and W3C trace context still propagates through
gRPC metadata and NATS headers, so traces stay connected across services that
do export. `Telemetry.shutdown()` flushes; services call it last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger(__name__)


@dataclass
class Telemetry:
    """Handle on the installed provider (None when telemetry is off)."""

    provider: TracerProvider | None

    def shutdown(self) -> None:
        """Flush pending spans and stop exporting."""
        if self.provider is not None:
            self.provider.shutdown()


def setup_telemetry(service: str, exporter: str = "none", endpoint: str | None = None) -> Telemetry:
    """Install a tracer provider for `service` when an exporter is configured."""
    if exporter == "none":
        return Telemetry(provider=None)
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    log.info("telemetry on", extra={"exporter": exporter})
    return Telemetry(provider=provider)
