"""Structured logging: one JSON object a line, with request and trace ids.

Every record carries the service name, the current request id and actor (from
`agentrt_kit.context`) and the OpenTelemetry trace and span ids when a span is
active. JSON encoding escapes control characters, so nothing a client sends can
forge log lines; the text format escapes them explicitly.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from agentrt_kit.context import actor_var, request_id_var

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's terminal-coloured copy of the message
}


def _ids() -> dict[str, str]:
    out: dict[str, str] = {}
    if (rid := request_id_var.get()) is not None:
        out["request_id"] = rid
    if (actor := actor_var.get()) is not None:
        out["actor"] = actor
    span_ctx = trace.get_current_span().get_span_context()
    if span_ctx.is_valid:
        out["trace_id"] = format(span_ctx.trace_id, "032x")
        out["span_id"] = format(span_ctx.span_id, "016x")
    return out


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render the record, its context ids and its extras as JSON."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_ids())
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def escape_control(text: str) -> str:
    """Escape control characters (newlines included) so one record stays one line."""
    if text.isprintable():  # the common case, checked at C speed
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode() for ch in text
    )


class TextFormatter(logging.Formatter):
    """Human-oriented single-line format for development."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render `time level service logger: message key=value ...` on one line."""
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        fields = {**_ids(), **_extras(record)}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{ts} {record.levelname:<7} {self.service} {record.name}: {record.getMessage()}"
        if tail:
            line += f" [{tail}]"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info)
        return escape_control(line)


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Install the service's root handler (idempotent: replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO.
    for noisy in ("nats", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
