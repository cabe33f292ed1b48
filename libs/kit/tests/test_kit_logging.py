"""Structured logging: one line per record, with context ids, extras and escaped text."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from agentrt_kit.context import actor_var, request_id_var
from agentrt_kit.logging import JsonFormatter, TextFormatter, escape_control, setup_logging


@pytest.fixture
def make_logger() -> Iterator[Callable[[logging.Formatter], tuple[logging.Logger, io.StringIO]]]:
    """A private logger writing through `formatter` into a buffer."""
    made: list[logging.Logger] = []

    def make(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        handler.setFormatter(formatter)
        logger = logging.getLogger(f"kit.test.{uuid.uuid4().hex[:8]}")
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        made.append(logger)
        return logger, buf

    yield make
    for logger in made:
        logger.handlers.clear()


@pytest.fixture
def call_context() -> Iterator[None]:
    rid, actor = request_id_var.set("req-1"), actor_var.set("alice")
    yield
    request_id_var.reset(rid)
    actor_var.reset(actor)


def lines(buf: io.StringIO) -> list[str]:
    text = buf.getvalue()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def test_json_record_is_one_object_with_service_level_and_message(make_logger) -> None:
    log, buf = make_logger(JsonFormatter("registry"))
    log.warning("hello %s", "world")
    (line,) = lines(buf)
    doc = json.loads(line)
    assert doc["service"] == "registry"
    assert doc["level"] == "WARNING"
    assert doc["msg"] == "hello world"
    assert doc["logger"] == log.name
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", doc["ts"])
    for absent in ("request_id", "actor", "trace_id", "span_id", "exc"):
        assert absent not in doc


def test_json_record_carries_request_id_actor_and_trace_ids(make_logger, call_context) -> None:
    log, buf = make_logger(JsonFormatter("svc"))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        log.info("inside")
    doc = json.loads(lines(buf)[0])
    ctx = span.get_span_context()
    assert doc["request_id"] == "req-1"
    assert doc["actor"] == "alice"
    assert doc["trace_id"] == format(ctx.trace_id, "032x")
    assert doc["span_id"] == format(ctx.span_id, "016x")


def test_json_record_includes_extras_even_unserialisable_ones(make_logger) -> None:
    class Thing:
        def __str__(self) -> str:
            return "a-thing"

    log, buf = make_logger(JsonFormatter("svc"))
    log.info("with extras", extra={"agent_id": "a1", "count": 3, "thing": Thing()})
    doc = json.loads(lines(buf)[0])
    assert (doc["agent_id"], doc["count"], doc["thing"]) == ("a1", 3, "a-thing")
    # Standard LogRecord attributes are not dumped as extras.
    for internal in ("args", "levelno", "pathname", "exc_info", "msecs"):
        assert internal not in doc


def test_json_record_puts_the_exception_under_exc(make_logger) -> None:
    log, buf = make_logger(JsonFormatter("svc"))
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError:
        log.exception("failed")
    (line,) = lines(buf)
    doc = json.loads(line)
    assert doc["msg"] == "failed"
    assert doc["level"] == "ERROR"
    assert doc["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad value\nsecond line" in doc["exc"]


def test_json_message_with_control_characters_stays_on_one_line(make_logger) -> None:
    log, buf = make_logger(JsonFormatter("svc"))
    evil = 'ok\n{"level": "CRITICAL", "msg": "forged"}\r\x1b[31mred\u2028'
    log.info(evil, extra={"field": "x\ny"})
    (line,) = lines(buf)
    assert "\x1b" not in line
    assert "\r" not in line
    doc = json.loads(line)
    assert doc["msg"] == evil
    assert doc["field"] == "x\ny"


def test_text_record_is_one_line_with_ids_and_extras(make_logger, call_context) -> None:
    log, buf = make_logger(TextFormatter("registry"))
    log.info("created %s", "a1", extra={"agent_id": "a1"})
    (line,) = lines(buf)
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} INFO    registry kit\.test\.\w+: created a1 \[", line)
    assert line.endswith("[request_id=req-1 actor=alice agent_id=a1]")


def test_text_record_without_fields_has_no_brackets(make_logger) -> None:
    log, buf = make_logger(TextFormatter("svc"))
    log.error("plain")
    (line,) = lines(buf)
    assert line.endswith("svc " + log.name + ": plain")


def test_text_record_escapes_control_characters(make_logger) -> None:
    log, buf = make_logger(TextFormatter("svc"))
    log.warning("line1\nFAKE 12:00:00 INFO forged\x1b[2J", extra={"who": "a\rb"})
    (line,) = lines(buf)
    assert "\x1b" not in line
    assert "\r" not in line
    assert "line1\\nFAKE 12:00:00 INFO forged\\x1b[2J" in line
    assert "who=a\\rb" in line


def test_text_record_appends_the_exception_on_the_same_line(make_logger) -> None:
    log, buf = make_logger(TextFormatter("svc"))
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("lookup failed")
    (line,) = lines(buf)
    assert "lookup failed | Traceback (most recent call last):\\n" in line
    assert line.endswith("KeyError: 'k'")


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain text é ü 中", "plain text é ü 中"),
        ("a\nb", "a\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31m", "\\x1b[31m"),
        ("nul\x00", "nul\\x00"),
        ("sep\u2028", "sep\\u2028"),
        ("", ""),
    ],
)
def test_escape_control(text: str, escaped: str) -> None:
    assert escape_control(text) == escaped


@pytest.fixture
def restore_root_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: logging.getLogger(n).level for n in ("nats", "grpc", "asyncio")}
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


def test_setup_logging_replaces_handlers_and_writes_json(
    restore_root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    root = restore_root_logging
    stale = logging.StreamHandler(io.StringIO())
    root.addHandler(stale)
    setup_logging("registry", level="debug", fmt="json")
    setup_logging("registry", level="debug", fmt="json")  # idempotent
    assert len(root.handlers) == 1
    assert stale not in root.handlers
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert root.level == logging.DEBUG
    for noisy in ("nats", "grpc", "asyncio"):
        assert logging.getLogger(noisy).level == logging.WARNING
    logging.getLogger("kit.test.setup").debug("visible")
    logging.getLogger("grpc").info("hidden")
    out = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["msg"] for line in out] == ["visible"]
    assert json.loads(out[0])["service"] == "registry"


def test_setup_logging_text_format_and_quiet_level(
    restore_root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("svc", level="error", fmt="text")
    root = restore_root_logging
    assert isinstance(root.handlers[0].formatter, TextFormatter)
    assert root.level == logging.ERROR
    assert logging.getLogger("nats").level == logging.ERROR  # never louder than root
    logging.getLogger("kit.test.setup").warning("dropped")
    logging.getLogger("kit.test.setup").error("shown")
    err = capsys.readouterr().err
    assert "dropped" not in err
    assert " ERROR   svc kit.test.setup: shown" in err
    assert root.handlers[0].stream is sys.stderr
