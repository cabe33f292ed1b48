"""NATS helpers against a real nats-server: names, resilient client, streams, publish, consume."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DiscardPolicy, KeyValueConfig, StreamConfig
from opentelemetry.sdk.trace import TracerProvider

from agentrt_kit.context import request_id_var
from agentrt_kit.nats import (
    MSG_ID_HEADER,
    BackgroundSubscription,
    Names,
    NatsClient,
    Reject,
    Retry,
    StreamLimits,
    consume,
    decode_headers,
    ensure_bucket,
    ensure_stream,
    header,
    publish,
    trace_headers,
)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `check()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def js(nats_server: Any) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def stream(js: JetStreamContext, nats_prefix: str) -> AsyncIterator[str]:
    """A stream of this test's own over `<prefix>.jobs.>`."""
    names = Names(nats_prefix)
    name = names.stream("jobs")
    await ensure_stream(js, StreamConfig(name=name, subjects=[names.subject("jobs", ">")]))
    yield name
    await js.delete_stream(name)


# ------------------------------------------------------------------ names


def test_names_default_prefix() -> None:
    names = Names()
    assert names.subject("registry", "agent", "deleted") == "agentrt.registry.agent.deleted"
    assert names.stream("registry") == "AGENTRT_REGISTRY"
    assert names.bucket("templates") == "agentrt_templates"


def test_names_with_another_prefix_and_dashes() -> None:
    names = Names("t-1")
    assert names.subject("run", "started", "r1") == "t-1.run.started.r1"
    assert names.stream("run-events") == "T_1_RUN_EVENTS"
    assert names.bucket("llm-configs") == "t_1_llm_configs"


# ------------------------------------------------------------------ client


async def echo(msg: Msg) -> None:
    await msg.respond(msg.data)


async def test_client_connects_in_the_background_once_the_server_comes_up(
    make_nats_server: Any,
) -> None:
    server = make_nats_server()
    server.stop()
    client = NatsClient(server.url, name="kit-test")
    started = time.monotonic()
    await client.start()
    assert time.monotonic() - started < 0.5  # start() does not wait for NATS
    try:
        assert not client.connected
        assert await client.wait_connected(0.3) is False
        server.start()
        assert await client.wait_connected(10) is True
        assert client.connected
        # It works: a request/reply round trip through the server.
        sub = await client.nc.subscribe("kit.echo", cb=echo)
        assert (await client.nc.request("kit.echo", b"hi", timeout=2)).data == b"hi"
        await sub.unsubscribe()
    finally:
        await client.close()


async def test_client_notices_the_server_going_and_reconnects(make_nats_server: Any) -> None:
    server = make_nats_server()
    client = NatsClient(server.url, name="kit-test")
    await client.start()
    try:
        assert await client.wait_connected(10)
        server.stop()
        await eventually(lambda: not client.connected, 5)
        server.start()
        await eventually(lambda: client.connected, 10)
        # The same client object works again.
        sub = await client.nc.subscribe("kit.echo", cb=echo)
        assert (await client.nc.request("kit.echo", b"back", timeout=2)).data == b"back"
        await sub.unsubscribe()
    finally:
        await client.close()
    assert not client.connected
    assert client.nc.is_closed


async def test_client_takes_a_comma_separated_server_list(nats_server: Any) -> None:
    dead = "nats://127.0.0.1:1"
    client = NatsClient(f" {dead} , {nats_server.url} ,", name="kit-test")
    await client.start()
    try:
        assert await client.wait_connected(10)
        assert client.nc.connected_url is not None
        assert client.nc.connected_url.port == nats_server.port
    finally:
        await client.close()


async def test_close_drains_pending_publishes(nats_server: Any) -> None:
    listener = await nats.connect(nats_server.url)
    got: list[bytes] = []

    async def collect(msg: Msg) -> None:
        got.append(msg.data)

    await listener.subscribe("kit.drain", cb=collect)
    await listener.flush()
    client = NatsClient(nats_server.url, name="kit-test")
    await client.start()
    assert await client.wait_connected(10)
    for i in range(200):
        await client.nc.publish("kit.drain", str(i).encode())
    await client.close()  # no flush of our own: close must not lose them
    await eventually(lambda: len(got) == 200, 5)
    assert got == [str(i).encode() for i in range(200)]
    await listener.close()


async def test_close_while_never_connected_stops_trying(make_nats_server: Any) -> None:
    server = make_nats_server()
    server.stop()
    client = NatsClient(server.url, name="kit-test")
    await client.start()
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 3
    server.start()
    await asyncio.sleep(0.5)
    assert not client.connected
    assert await client.wait_connected(0.01) is False


async def test_close_before_start_is_harmless() -> None:
    client = NatsClient("nats://127.0.0.1:1", name="kit-test")
    await client.close()
    assert not client.connected


async def test_js_context_is_reused_per_connection(nats_server: Any, nats_prefix: str) -> None:
    client = NatsClient(nats_server.url, name="kit-test")
    await client.start()
    try:
        assert await client.wait_connected(10)
        assert client.js is client.js
        names = Names(nats_prefix)
        await ensure_stream(
            client.js, StreamConfig(name=names.stream("js"), subjects=[names.subject("js")])
        )
        assert (await client.js.publish(names.subject("js"), b"x")).seq == 1
        await client.js.delete_stream(names.stream("js"))
    finally:
        await client.close()


async def test_connect_error_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentrt_kit.nats")
    # nats-py refuses to mix websocket and plain URLs when connecting.
    client = NatsClient("nats://127.0.0.1:1,ws://127.0.0.1:2", name="kit-test")
    await client.start()
    try:
        await eventually(
            lambda: (
                sum(r.getMessage() == "nats connect failed, retrying" for r in caplog.records) >= 2
            ),
            5,
        )
        assert not client.connected
        record = next(
            r for r in caplog.records if r.getMessage() == "nats connect failed, retrying"
        )
        assert "mixing of websocket" in record.error
        assert 0 < record.in_s <= 5
    finally:
        await client.close()


# ------------------------------------------------------------------ streams


async def test_ensure_stream_is_idempotent_and_applies_changes(
    js: JetStreamContext, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    config = StreamConfig(
        name=names.stream("audit"), subjects=[names.subject("audit", ">")], max_age=60
    )
    await ensure_stream(js, config)
    await js.publish(names.subject("audit", "x"), b"kept")
    await ensure_stream(js, config)  # same config: nothing changes, nothing lost
    info = await js.stream_info(config.name)
    assert info.config.max_age == 60
    assert info.state.messages == 1
    changed = StreamConfig(name=config.name, subjects=[names.subject("audit", ">")], max_age=120)
    await ensure_stream(js, changed)
    info = await js.stream_info(config.name)
    assert info.config.max_age == 120
    assert info.state.messages == 1
    await js.delete_stream(config.name)


@pytest.mark.parametrize(("max_age", "max_bytes"), [(0, 1), (-1, 1), (1, 0), (1, -1)])
def test_stream_limits_refuse_what_is_not_a_bound(max_age: float, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        StreamLimits(max_age, max_bytes)


def test_stream_limits_make_a_bounded_config_with_a_window_within_max_age() -> None:
    config = StreamLimits(60.0, 1024).stream_config(
        name="S", subjects=["s.>"], discard=DiscardPolicy.NEW, duplicate_window=600.0
    )
    assert (config.max_age, config.max_bytes, config.discard) == (60.0, 1024, DiscardPolicy.NEW)
    assert config.duplicate_window == 60.0  # NATS refuses a window longer than max_age


async def test_ensure_stream_bounds_a_stream_created_unbounded_and_drops_its_oldest(
    js: JetStreamContext, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    name, subjects = names.stream("log"), [names.subject("log", ">")]
    await ensure_stream(js, StreamConfig(name=name, subjects=subjects))  # no limit at all
    for n in range(40):
        await js.publish(names.subject("log", str(n)), b"x" * 1000)
    limits = StreamLimits(3_600.0, 16 * 1024)
    await ensure_stream(
        js, limits.stream_config(name=name, subjects=subjects, duplicate_window=120)
    )
    info = await js.stream_info(name)
    assert (info.config.max_age, info.config.max_bytes) == (3_600.0, 16 * 1024)
    assert 0 < info.state.bytes <= 16 * 1024
    assert info.state.last_seq == 40  # the newest are kept
    await js.delete_stream(name)


async def test_ensure_bucket_creates_a_bounded_bucket_and_bounds_an_existing_one(
    js: JetStreamContext, nats_prefix: str
) -> None:
    bucket = Names(nats_prefix).bucket("things")
    old = await js.create_key_value(KeyValueConfig(bucket=bucket, history=2))  # no limit
    await old.put("a", b"1")
    limits = StreamLimits(600.0, 1024**2)
    kv = await ensure_bucket(js, limits.bucket_config(bucket, history=5))
    config = (await js.stream_info(f"KV_{bucket}")).config
    assert (config.max_age, config.max_bytes, config.max_msgs_per_subject) == (600.0, 1024**2, 5)
    assert config.discard == DiscardPolicy.NEW  # a full bucket refuses, never drops a key
    assert (await kv.get("a")).value == b"1"
    await js.delete_key_value(bucket)
    fresh = await ensure_bucket(js, limits.bucket_config(bucket, history=5))
    status = await fresh.status()
    assert (status.ttl, status.history) == (600.0, 5)
    config = (await js.stream_info(f"KV_{bucket}")).config
    assert config.max_bytes == 1024**2
    await js.delete_key_value(bucket)


async def test_ensure_stream_reraises_other_refusals(
    js: JetStreamContext, stream: str, nats_prefix: str
) -> None:
    # Another stream over the same subjects: refused for a reason update cannot fix.
    clash = StreamConfig(name=f"{stream}_CLASH", subjects=[Names(nats_prefix).subject("jobs", ">")])
    with pytest.raises(nats.js.errors.BadRequestError) as info:
        await ensure_stream(js, clash)
    assert info.value.err_code != 10058


# ------------------------------------------------------------------ publish


async def test_publish_deduplicates_by_msg_id(
    js: JetStreamContext, stream: str, nats_prefix: str
) -> None:
    subject = Names(nats_prefix).subject("jobs", "a1")
    first = await publish(js, subject, b"one", msg_id="evt-1")
    again = await publish(js, subject, b"one again", msg_id="evt-1")
    other = await publish(js, subject, b"two", msg_id="evt-2")
    assert first == again
    assert other == first + 1
    info = await js.stream_info(stream)
    assert info.state.messages == 2
    stored = await js.get_msg(stream, first)
    assert stored.data == b"one"


async def test_publish_headers_carry_msg_id_trace_and_request_id(
    js: JetStreamContext, stream: str, nats_prefix: str
) -> None:
    subject = Names(nats_prefix).subject("jobs", "a1")
    token = request_id_var.set("req-7")
    try:
        with TracerProvider().get_tracer("t").start_as_current_span("pub") as span:
            seq = await publish(js, subject, b"x", msg_id="evt-9", headers={"k": "v"})
    finally:
        request_id_var.reset(token)
    headers = (await js.get_msg(stream, seq)).headers
    assert headers[MSG_ID_HEADER] == "evt-9"
    assert headers["k"] == "v"
    assert headers["x-request-id"] == "req-7"
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert headers["traceparent"].split("-")[1] == trace_id


async def test_publish_without_span_or_request_sends_only_the_msg_id(
    js: JetStreamContext, stream: str, nats_prefix: str
) -> None:
    seq = await publish(js, Names(nats_prefix).subject("jobs", "b"), b"x", msg_id="m-1")
    assert (await js.get_msg(stream, seq)).headers == {MSG_ID_HEADER: "m-1"}


def test_trace_headers_extra_wins() -> None:
    token = request_id_var.set("from-context")
    try:
        assert trace_headers({"x-request-id": "explicit", "a": "b"}) == {
            "x-request-id": "explicit",
            "a": "b",
        }
        assert trace_headers() == {"x-request-id": "from-context"}
    finally:
        request_id_var.reset(token)
    assert trace_headers() == {}


# ------------------------------------------------------------------ consume


class Recorder:
    """A consumer handler whose outcome depends on the payload."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self.headers: dict[str, dict[str, Any]] = {}

    async def __call__(self, msg: Msg) -> None:
        body = msg.data.decode()
        self.deliveries[body] += 1
        self.headers[body] = decode_headers(msg)
        first = self.deliveries[body] == 1
        if body == "retry" and first:
            raise Retry(delay=0.1)
        if body == "reject":
            raise Reject("cannot ever work")
        if body == "boom" and first:
            raise RuntimeError("transient bug")
        if body == "always-retry":
            raise Retry(delay=0.05)


async def test_consume_acks_retries_rejects_and_redelivers_failures(
    js: JetStreamContext, stream: str, nats_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = Names(nats_prefix)
    for body in ("ok", "retry", "reject", "boom"):
        await publish(js, names.subject("jobs", body), body.encode(), msg_id=body)
    handler, stop = Recorder(), asyncio.Event()
    # A short ack_wait: anything not acked or terminated would come back quickly.
    task = asyncio.create_task(
        consume(
            js,
            stream=stream,
            durable="worker",
            subject=names.subject("jobs", ">"),
            handler=handler,
            ack_wait=0.5,
            stop=stop,
        )
    )
    try:
        await eventually(lambda: handler.deliveries["retry"] == 2, 5)
        await eventually(lambda: handler.deliveries["boom"] == 2, 5)  # nak'ed with 1 s delay
        await asyncio.sleep(1.2)  # more than two ack_waits: nothing else comes back
        assert handler.deliveries == Counter({"ok": 1, "retry": 2, "reject": 1, "boom": 2})
        info = await js.consumer_info(stream, "worker")
        assert info.num_ack_pending == 0
        assert info.num_pending == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert handler.headers["ok"][MSG_ID_HEADER] == "ok"
    assert any(r.getMessage() == "message rejected" for r in caplog.records)
    assert any(r.getMessage() == "message handler failed" and r.exc_info for r in caplog.records)


async def test_consume_gives_up_after_max_deliver(
    js: JetStreamContext, stream: str, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    await publish(js, names.subject("jobs", "x"), b"always-retry", msg_id="r")
    handler, stop = Recorder(), asyncio.Event()
    task = asyncio.create_task(
        consume(
            js,
            stream=stream,
            durable="bounded",
            subject=names.subject("jobs", ">"),
            handler=handler,
            max_deliver=3,
            stop=stop,
        )
    )
    try:
        await eventually(lambda: handler.deliveries["always-retry"] == 3, 5)
        await asyncio.sleep(0.4)
        assert handler.deliveries["always-retry"] == 3
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_consume_stops_when_asked_and_its_durable_resumes(
    js: JetStreamContext, stream: str, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    await publish(js, names.subject("jobs", "1"), b"first", msg_id="1")
    handler = Recorder()

    async def run_until(count: int) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            consume(
                js,
                stream=stream,
                durable="resumer",
                subject=names.subject("jobs", ">"),
                handler=handler,
                stop=stop,
            )
        )
        await eventually(lambda: sum(handler.deliveries.values()) == count, 5)
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 2.5  # at most one fetch timeout

    await run_until(1)
    await publish(js, names.subject("jobs", "2"), b"second", msg_id="2")
    await run_until(2)
    assert handler.deliveries == Counter({"first": 1, "second": 1})


async def test_consume_with_an_explicit_consumer_config(
    js: JetStreamContext, stream: str, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    await publish(js, names.subject("jobs", "skip"), b"skipped", msg_id="s")
    await publish(js, names.subject("jobs", "take"), b"taken", msg_id="t")
    handler, stop = Recorder(), asyncio.Event()
    config = ConsumerConfig(filter_subject=names.subject("jobs", "take"), ack_wait=5)
    task = asyncio.create_task(
        consume(
            js,
            stream=stream,
            durable="filtered",
            subject=names.subject("jobs", "take"),
            handler=handler,
            stop=stop,
            config=config,
        )
    )
    try:
        await eventually(lambda: handler.deliveries["taken"] == 1, 5)
        await asyncio.sleep(0.2)
        assert handler.deliveries == Counter({"taken": 1})
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_header_helpers(js: JetStreamContext, nats_server: Any, nats_prefix: str) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.subscribe(f"{nats_prefix}.plain")
        await nc.publish(f"{nats_prefix}.plain", b"no headers")
        await nc.publish(f"{nats_prefix}.plain", b"with", headers={"a": "1"})
        bare = await sub.next_msg(timeout=2)
        with_headers = await sub.next_msg(timeout=2)
        assert header(bare, "a") is None
        assert decode_headers(bare) == {}
        assert header(with_headers, "a") == "1"
        assert decode_headers(with_headers) == {"a": "1"}
    finally:
        await nc.close()


async def test_a_background_subscription_is_made_once_nats_is_up_and_undone_on_close(
    make_nats_server: Any,
) -> None:
    server = make_nats_server()
    server.stop()
    client = NatsClient(server.url, name="kit-test")
    await client.start()
    heard: list[bytes] = []

    async def hear(msg: Msg) -> None:
        heard.append(msg.data)

    subscription = BackgroundSubscription(client, "kit.heard", hear, what="test")
    subscription.start()
    try:
        await asyncio.sleep(0.2)
        assert not subscription.active  # NATS is down: nothing yet, nothing raised
        server.start()
        await eventually(lambda: subscription.active)
        await client.nc.publish("kit.heard", b"one")
        await eventually(lambda: heard == [b"one"])
        await subscription.close()
        await client.nc.publish("kit.heard", b"two")
        await client.nc.flush()
        await asyncio.sleep(0.1)
        assert heard == [b"one"]
    finally:
        await subscription.close()  # twice is harmless
        await client.close()
