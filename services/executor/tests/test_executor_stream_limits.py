"""Storage that stays bounded: every JetStream stream and KV bucket a running system declares
(registry, tools service, executor) has the age and size limits its settings give, also
when an older release had declared it without them (issue 13)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from executor_support import System, eventually, offline, run_input, services_config
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from agentrt.executor.v1 import executor_pb2 as pb
from agentrt_kit.nats import Names
from agentrt_testkit.nats_server import NatsServer

MIB = 1024**2
DAY = 86_400.0
# Each limit set to a value no default has, so a stream bounded by a default fails.
ENV = {
    "AGENTRT_EXECUTOR_RUN_EVENTS_RETENTION_SECONDS": "7200",
    "AGENTRT_EXECUTOR_RUN_EVENTS_MAX_BYTES": str(3 * MIB),
    "AGENTRT_EXECUTOR_QUEUE_MAX_AGE_SECONDS": "3600",
    "AGENTRT_EXECUTOR_QUEUE_MAX_BYTES": str(2 * MIB),
    "AGENTRT_EXECUTOR_QUEUE_DEAD_LETTERS_MAX_AGE_SECONDS": "1800",
    "AGENTRT_EXECUTOR_QUEUE_DEAD_LETTERS_MAX_BYTES": str(1 * MIB),
    "AGENTRT_REGISTRY_STREAM_MAX_AGE_DAYS": "2",
    "AGENTRT_REGISTRY_STREAM_MAX_BYTES": str(5 * MIB),
    "AGENTRT_AUDIT_MAX_AGE_SECONDS": "900",
    "AGENTRT_AUDIT_MAX_BYTES": str(6 * MIB),
    "AGENTRT_CATALOG_TTL_SECONDS": str(DAY),
    "AGENTRT_CATALOG_MAX_BYTES": str(7 * MIB),
}
# (max_age seconds, max_bytes) of each stream, by the name `Names.stream` gives it.
EXPECTED = {
    "run_events": (7200.0, 3 * MIB),
    "run_queue": (3600.0, 2 * MIB),
    "run_dead_letters": (1800.0, 1 * MIB),
    "webhook_queue": (3600.0, 2 * MIB),
    "webhook_dead_letters": (1800.0, 1 * MIB),
    "registry": (2 * DAY, 5 * MIB),
    "audit": (900.0, 6 * MIB),
}
CATALOG_STREAM = "KV_{prefix}_templates"
CATALOG = (DAY, 7 * MIB)
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
PARSE_THEN_ANSWER = offline(
    {"content": "", "tool_calls": [{"name": "parse_url", "args": {"url": "https://a.example/"}}]},
    {"content": "Parsed: {tool_result}"},
)


def expected_limits(prefix: str) -> dict[str, tuple[float, int]]:
    names = Names(prefix)
    limits = {names.stream(context): bounds for context, bounds in EXPECTED.items()}
    limits[CATALOG_STREAM.format(prefix=prefix)] = CATALOG
    return limits


@pytest.fixture
def server(make_nats_server: Callable[[], NatsServer]) -> NatsServer:
    """A NATS of this test's own: every stream on it is one the system declared."""
    return make_nats_server()


@pytest.fixture
async def js(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(server.url)
    yield nc.jetstream()
    await nc.close()


async def limits_on(js: JetStreamContext) -> dict[str, tuple[float, int]]:
    """(max_age, max_bytes) of every stream on the server, by name."""
    return {
        str(info.config.name): (info.config.max_age or 0.0, info.config.max_bytes or -1)
        for info in await js.streams_info()
    }


async def run_everything(
    tmp_path: Path, server: NatsServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> System:
    """Start a system with ENV's limits and use each stream once: an agent created
    (registry events), a run calling a tool (run queue, run events, audit), webhooks on."""
    for variable, value in ENV.items():
        monkeypatch.setenv(variable, value)
    system = System.on_sqlite(tmp_path, server.url, prefix)
    await system.start(
        webhook_secret=SECRET, services_config=services_config(scripted=PARSE_THEN_ANSWER)
    )
    agent = await system.create_agent(template_id="conversation", toolsets=["parse_url"])
    reply = await system.executor.Execute(pb.ExecuteRequest(input=run_input(agent.id, "parse")))
    assert reply.message.content.startswith("Parsed:")
    return system


async def test_every_stream_and_bucket_the_system_declares_has_the_limits_of_its_settings(
    tmp_path: Path,
    server: NatsServer,
    js: JetStreamContext,
    nats_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system = await run_everything(tmp_path, server, nats_prefix, monkeypatch)
    try:
        expected = expected_limits(nats_prefix)
        # The audit stream is declared with the first record, published in the background.
        await eventually(lambda: has_streams(js, expected), timeout=30)
        assert await limits_on(js) == expected
        catalog = await js.stream_info(CATALOG_STREAM.format(prefix=nats_prefix))
        assert catalog.config.discard == DiscardPolicy.NEW  # a full bucket refuses writes
        assert catalog.config.max_msgs_per_subject == 5
        queue = await js.stream_info(Names(nats_prefix).stream("run_queue"))
        assert queue.config.discard == DiscardPolicy.NEW  # a full queue refuses new runs
        for log in ("run_events", "run_dead_letters", "registry", "audit"):
            info = await js.stream_info(Names(nats_prefix).stream(log))
            assert info.config.discard == DiscardPolicy.OLD  # a full log drops its oldest
    finally:
        await system.stop()


async def has_streams(js: JetStreamContext, expected: dict[str, Any]) -> bool:
    return set(await limits_on(js)) == set(expected)


async def limits_are(js: JetStreamContext, expected: dict[str, tuple[float, int]]) -> bool:
    return await limits_on(js) == expected


async def test_streams_an_older_release_declared_unbounded_get_their_limits_at_start(
    tmp_path: Path,
    server: NatsServer,
    js: JetStreamContext,
    nats_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = Names(nats_prefix)
    week = 7 * DAY
    # Declared as releases before issue 13 did: an age at most, never a size.
    old = [
        StreamConfig(
            name=names.stream("run_events"),
            subjects=[names.subject("runs", "events", ">")],
            max_age=DAY,
            max_bytes=-1,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        ),
        StreamConfig(
            name=names.stream("run_queue"),
            subjects=[names.subject("runs", "queue")],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_age=week,
            max_bytes=-1,
            duplicate_window=600.0,
        ),
        StreamConfig(
            name=names.stream("run_dead_letters"),
            subjects=[names.subject("runs", "dead")],
            storage=StorageType.FILE,
            max_age=week,
            duplicate_window=600.0,
        ),
        StreamConfig(
            name=names.stream("registry"),
            subjects=[names.subject("registry", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=30 * DAY,
            duplicate_window=600.0,
        ),
        StreamConfig(
            name=names.stream("audit"),
            subjects=[names.subject("audit", ">")],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=90 * DAY,
            duplicate_window=600.0,
        ),
    ]
    for config in old:
        await js.add_stream(config)
    await js.publish(names.subject("runs", "dead"), b'{"run_id": "old"}')
    await js.create_key_value(KeyValueConfig(bucket=names.bucket("templates"), history=5))
    assert set((await limits_on(js)).values()) <= {
        (DAY, -1),
        (week, -1),
        (30 * DAY, -1),
        (90 * DAY, -1),
        (0.0, -1),
    }

    system = await run_everything(tmp_path, server, nats_prefix, monkeypatch)
    try:
        # Each is brought to its limits where its service declares it: at start, and the
        # audit stream with its first record (published in the background).
        await eventually(lambda: limits_are(js, expected_limits(nats_prefix)), timeout=30)
        dead = await js.stream_info(names.stream("run_dead_letters"))
        assert dead.state.messages == 1  # what the streams held is kept
    finally:
        await system.stop()
