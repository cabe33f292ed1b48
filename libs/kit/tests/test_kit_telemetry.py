"""OpenTelemetry bootstrap: off by default; console and OTLP exporters install a provider."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from agentrt_kit.telemetry import setup_telemetry


@pytest.fixture
def fresh_global_provider() -> Iterator[None]:
    """Let a test install the process-wide tracer provider, then put the old state back.

    OpenTelemetry allows one `set_tracer_provider` per process; tests of the
    installation itself reset that guard (as OpenTelemetry's own tests do).
    """
    saved = (trace._TRACER_PROVIDER_SET_ONCE, trace._TRACER_PROVIDER)
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    yield
    trace._TRACER_PROVIDER_SET_ONCE, trace._TRACER_PROVIDER = saved


def test_none_installs_nothing() -> None:
    before = trace.get_tracer_provider()
    telemetry = setup_telemetry("svc", "none")
    assert telemetry.provider is None
    telemetry.shutdown()  # a no-op
    assert trace.get_tracer_provider() is before


def test_console_exporter_installs_the_global_provider_and_shutdown_stops_it(
    fresh_global_provider: None,
) -> None:
    telemetry = setup_telemetry("registry", "console")
    assert isinstance(telemetry.provider, TracerProvider)
    assert trace.get_tracer_provider() is telemetry.provider
    assert telemetry.provider.resource.attributes["service.name"] == "registry"
    memory = InMemorySpanExporter()
    telemetry.provider.add_span_processor(SimpleSpanProcessor(memory))
    # Any module's tracer now records spans.
    with trace.get_tracer("some.module").start_as_current_span("work"):
        pass
    assert [s.name for s in memory.get_finished_spans()] == ["work"]
    telemetry.shutdown()
    with trace.get_tracer("some.module").start_as_current_span("after-shutdown"):
        pass
    assert [s.name for s in memory.get_finished_spans()] == ["work"]


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", None])
def test_otlp_exporter_installs_a_provider(
    fresh_global_provider: None, endpoint: str | None
) -> None:
    telemetry = setup_telemetry("svc", "otlp", endpoint)
    assert isinstance(telemetry.provider, TracerProvider)
    assert trace.get_tracer_provider() is telemetry.provider
    telemetry.shutdown()  # nothing pending: returns without reaching a collector


def test_console_telemetry_in_a_fresh_process_records_spans_of_global_tracers() -> None:
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from agentrt_kit.telemetry import setup_telemetry

        telemetry = setup_telemetry("probe-svc", "console")
        with trace.get_tracer("x").start_as_current_span("outer"):
            with trace.get_tracer("x").start_as_current_span("inner"):
                pass
        telemetry.shutdown()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    decoder, spans, text, i = json.JSONDecoder(), [], done.stdout, 0
    while (i := text.find("{", i)) != -1:
        span, i = decoder.raw_decode(text, i)
        spans.append(span)
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"outer", "inner"}
    assert by_name["inner"]["parent_id"] == by_name["outer"]["context"]["span_id"]
    assert by_name["inner"]["resource"]["attributes"]["service.name"] == "probe-svc"
