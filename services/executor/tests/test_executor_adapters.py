"""The executor's adapters against the real thing: NATS, the registry, the tools service, SQL.

Each test has its own NATS prefix (or its own NATS server when it takes NATS
away), its own SQLite files or PostgreSQL schema, and real gRPC services
running in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import nats.js.errors
import psycopg
import pytest
from executor_support import eventually, spec
from google.protobuf.field_mask_pb2 import FieldMask
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from registry_support import SIMPLE, Registry, sqlite_registry
from tools_support import ToolsService

from agent_executor.adapters import catalog_publisher
from agent_executor.adapters.catalog_publisher import (
    CatalogPublisher,
    executor_entry,
    sandbox_entry,
)
from agent_executor.adapters.checkpointer import open_checkpointer
from agent_executor.adapters.memory import InMemoryTools
from agent_executor.adapters.nats_runs import JetStreamRunEvents, NatsCancelBus
from agent_executor.adapters.registry_client import RegistryAgents
from agent_executor.adapters.tools_client import GrpcTools, sandbox_info
from agent_executor.application.builtin.simple_test import SimpleTest
from agent_executor.application.ports import (
    SandboxInfo,
    SandboxRuntime,
    ToolCallContext,
    ToolSpec,
)
from agent_executor.application.templates import AgentTemplate, AgentView, TemplateCatalog
from agent_executor.config import Settings
from agent_executor.domain.runs import (
    MessageDelta,
    RunCompleted,
    RunEvent,
    RunStarted,
    Usage,
)
from agent_executor.domain.services_config import parse_services_config
from agent_executor.errors import AgentNotFound, RegistryUnavailable, ToolsUnavailable
from agentrt.events.v1 import run_events_pb2
from agentrt.registry.v1 import registry_pb2 as rpb
from agentrt.registry.v1 import registry_pb2_grpc as rpb_grpc
from agentrt.tools.v1 import tools_pb2
from agentrt_kit.catalog import open_bucket, publish_descriptor, publish_executor
from agentrt_kit.errors import InvalidArgument, NotFound, PermissionDenied
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.nats import MSG_ID_HEADER, Names, NatsClient, StreamLimits
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.ports import free_port
from agentrt_testkit.postgres import PostgresDatabase
from tool_service.config import Settings as ToolsSettings

NOW = datetime(2025, 5, 1, 9, 30, tzinfo=UTC)
LIMITS = StreamLimits(3_600.0, 16 * 1024**2)


@contextlib.asynccontextmanager
async def connected(url: str, name: str = "test") -> AsyncIterator[NatsClient]:
    """A started NatsClient, connected (closed on exit)."""
    client = NatsClient(url, name=name)
    await client.start()
    assert await client.wait_connected(5)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def nats_client(nats_server: Any) -> AsyncIterator[NatsClient]:
    async with connected(nats_server.url) as client:
        yield client


async def disconnected(client: NatsClient) -> None:
    await eventually(lambda: not client.connected, timeout=5)


async def reconnected(client: NatsClient) -> None:
    await eventually(lambda: client.connected, timeout=8)


# ------------------------------------------------------------------ catalogue publisher


class Plugged(AgentTemplate):
    id = "plugged"
    name = "Plugged"
    version = "0.3.0"

    def build(self, agent: AgentView, model: Any, tools: Any) -> Any:
        return None


async def read_entry(client: NatsClient, names: Names, key: str) -> dict[str, Any] | None:
    kv = await open_bucket(client.js, names, LIMITS)
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    assert entry.value is not None
    document: dict[str, Any] = json.loads(entry.value)
    return document


async def test_the_publisher_writes_every_template_under_its_id_and_version(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    catalog = TemplateCatalog([SimpleTest])
    catalog.replace_source("plugins/p", [Plugged])
    publisher = CatalogPublisher(nats_client, names, catalog.templates, limits=LIMITS, interval=60)
    await publisher.start()
    try:
        await asyncio.wait_for(publisher.published.wait(), 5)

        latest = await read_entry(nats_client, names, "simple-test")
        assert latest == await read_entry(nats_client, names, "simple-test/1.0.0")
        assert latest is not None
        assert set(latest) == {
            "id",
            "version",
            "name",
            "description",
            "framework",
            "config_schema",
            "config_fields",
        }
        assert (latest["id"], latest["version"], latest["framework"]) == (
            "simple-test",
            "1.0.0",
            "langgraph",
        )
        fields = {f["key"]: f for f in latest["config_fields"]}
        assert fields["response_prefix"]["type"] == "string"
        assert fields["response_prefix"]["validation"]["maxLength"] == 50
        assert latest["config_schema"]["properties"]["response_prefix"]["maxLength"] == 50
        plugged = await read_entry(nats_client, names, "plugged")
        assert plugged is not None
        assert plugged["version"] == "0.3.0"

        # The plugin goes away: its latest key is deleted, its versioned entry stays.
        _, removed = catalog.replace_source("plugins/p", [])
        publisher.changed(removed)
        await eventually(lambda: publisher.rounds == 2, timeout=5)
        assert await read_entry(nats_client, names, "plugged") is None
        assert await read_entry(nats_client, names, "plugged/0.3.0") is not None
        assert await read_entry(nats_client, names, "simple-test") is not None
    finally:
        await publisher.stop()


async def test_the_publisher_writes_this_executors_providers_and_limits(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    kv = await open_bucket(nats_client.js, names, LIMITS)
    now = time.time()
    gone = {"executor_id": "gone", "providers": ["x"], "expires_at": now - 600}
    sibling = {"executor_id": "sibling", "providers": ["offline"], "expires_at": now + 100}
    for other in (gone, sibling):
        await publish_executor(kv, other)
    services = parse_services_config(
        {"llm": {"providers": {"local": {"type": "offline"}, "gpt": {"type": "offline"}}}}, {}
    )
    settings = Settings(run_timeout_seconds=90, max_steps=12, max_tool_calls=0)
    publisher = CatalogPublisher(
        nats_client,
        names,
        TemplateCatalog([SimpleTest]).templates,
        limits=LIMITS,
        executor=executor_entry("exec-a", services, settings.published_limits()),
        interval=60,
    )
    await publisher.start()
    try:
        await asyncio.wait_for(publisher.published.wait(), 5)
        entry = await read_entry(nats_client, names, "_executors/exec-a")
        assert entry is not None
        assert entry["providers"] == ["gpt", "local"]
        assert entry["default_provider"] == "local"
        # max_tool_calls 0 is no ceiling: it is left out.
        assert entry["limits"] == {
            "run_timeout_seconds": 90,
            "max_steps": 12,
            "max_message_chars": 100_000,
        }
        assert now <= entry["published_at"] <= time.time()
        assert entry["expires_at"] == pytest.approx(entry["published_at"] + 180)
        # A long-gone executor's entry is cleared away; a live sibling's stays.
        assert await read_entry(nats_client, names, "_executors/gone") is None
        assert await read_entry(nats_client, names, "_executors/sibling") == sibling
        assert await read_entry(nats_client, names, "simple-test") is not None
    finally:
        await publisher.stop()


BUBBLEWRAP = SandboxInfo(
    available=True,
    isolation="bubblewrap",
    runtimes=(
        SandboxRuntime("python", "3.11.2", ("json", "os")),
        SandboxRuntime("javascript", "20.19.2", ("fs", "path")),
    ),
)


async def test_the_publisher_writes_the_code_sandbox_its_tools_service_reports(
    nats_client: NatsClient, nats_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_publisher, "SANDBOX_RETRY_SECONDS", 0.1)
    names = Names(nats_prefix)
    tools = InMemoryTools()
    tools.sandbox_info = None  # the tools service is not up yet
    services = parse_services_config({"llm": {"providers": {"local": {"type": "offline"}}}}, {})
    publisher = CatalogPublisher(
        nats_client,
        names,
        TemplateCatalog([SimpleTest]).templates,
        limits=LIMITS,
        executor=executor_entry("exec-a", services, {}),
        sandbox=tools.sandbox,
        interval=60,
    )

    async def sandbox() -> Any:
        entry = await read_entry(nats_client, names, "_executors/exec-a")
        assert entry is not None
        return entry["sandbox"]

    await publisher.start()
    try:
        await asyncio.wait_for(publisher.published.wait(), 5)
        assert await sandbox() is None  # unknown, not "unavailable"
        assert await read_entry(nats_client, names, "simple-test") is not None

        # It comes up: asked again within the retry delay (not a 60 s interval), and the
        # changed answer is published at once.
        tools.sandbox_info = BUBBLEWRAP
        await eventually(lambda: publisher.rounds >= 2, timeout=5)
        assert await sandbox() == {
            "available": True,
            "isolation": "bubblewrap",
            "reason": "",
            "runtimes": [
                {"language": "python", "version": "3.11.2", "modules": ["json", "os"]},
                {"language": "javascript", "version": "20.19.2", "modules": ["fs", "path"]},
            ],
        }
        # Known, and unchanged: nothing more is published before the interval.
        rounds = publisher.rounds
        await asyncio.sleep(0.5)
        assert publisher.rounds == rounds
    finally:
        await publisher.stop()


async def test_a_tools_service_that_does_not_answer_holds_no_template_back(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    names = Names(nats_prefix)
    services = parse_services_config({"llm": {"providers": {"local": {"type": "offline"}}}}, {})
    silent = asyncio.Event()

    async def never_answers() -> SandboxInfo:
        await silent.wait()
        raise AssertionError("unreachable")

    publisher = CatalogPublisher(
        nats_client,
        names,
        TemplateCatalog([SimpleTest]).templates,
        limits=LIMITS,
        executor=executor_entry("exec-a", services, {}),
        sandbox=never_answers,
        interval=60,
    )
    await publisher.start()
    try:
        await asyncio.wait_for(publisher.published.wait(), 5)
        entry = await read_entry(nats_client, names, "_executors/exec-a")
        assert entry is not None
        assert entry["sandbox"] is None
        assert await read_entry(nats_client, names, "simple-test") is not None
    finally:
        await publisher.stop()


def test_an_unavailable_sandbox_is_published_with_its_reason() -> None:
    unavailable = SandboxInfo(False, reason="bubblewrap cannot create namespaces")
    assert sandbox_entry(unavailable) == {
        "available": False,
        "isolation": "",
        "reason": "bubblewrap cannot create namespaces",
        "runtimes": [],
    }
    assert sandbox_entry(None) is None


async def test_the_publisher_heals_a_lost_bucket_after_nats_comes_back(
    make_nats_server: Callable[[], NatsServer], tmp_path: Path
) -> None:
    first = make_nats_server()
    (tmp_path / "fresh").mkdir()
    replacement = NatsServer(store_dir=str(tmp_path / "fresh"), port=first.port)
    names = Names("healing")
    try:
        async with connected(first.url) as client:
            publisher = CatalogPublisher(
                client, names, TemplateCatalog([SimpleTest]).templates, limits=LIMITS, interval=0.5
            )
            await publisher.start()
            try:
                await eventually(lambda: publisher.rounds >= 1, timeout=5)
                first.stop()
                await disconnected(client)
                replacement.start()  # same address, empty store: the bucket is gone
                await reconnected(client)
                rounds = publisher.rounds

                await eventually(lambda: publisher.rounds > rounds, timeout=5)
                assert (await read_entry(client, names, "simple-test")) is not None
            finally:
                await publisher.stop()
    finally:
        replacement.close()


async def test_the_publisher_publishes_again_as_soon_as_it_reconnects(
    make_nats_server: Callable[[], NatsServer],
) -> None:
    server = make_nats_server()
    async with connected(server.url) as client:
        publisher = CatalogPublisher(
            client,
            Names("again"),
            TemplateCatalog([SimpleTest]).templates,
            limits=LIMITS,
            interval=60,
        )
        await publisher.start()
        try:
            await eventually(lambda: publisher.rounds == 1, timeout=5)
            server.stop()
            await disconnected(client)
            server.start()
            await reconnected(client)
            await eventually(lambda: publisher.rounds == 2, timeout=1)
        finally:
            await publisher.stop()


# ------------------------------------------------------------------ run events


def events_of(run_id: str) -> list[RunEvent]:
    return [
        RunEvent(run_id, 1, NOW, RunStarted(run_id, "agent-1", 4, "task-1", "ctx-1")),
        RunEvent(run_id, 2, NOW, MessageDelta("Hel", "m1")),
        RunEvent(run_id, 3, NOW, MessageDelta("lo", "m1")),
        RunEvent(run_id, 4, NOW, RunCompleted("stop", Usage(11, 2))),
    ]


async def stored(client: NatsClient, stream: str) -> list[Any]:
    """Every message of the stream, in order."""
    info = await client.js.stream_info(stream)
    if not info.state.messages:
        return []
    return [
        await client.js.get_msg(stream, seq)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


@pytest.fixture
async def run_events(
    nats_client: NatsClient, nats_prefix: str
) -> AsyncIterator[JetStreamRunEvents]:
    sink = JetStreamRunEvents(nats_client, Names(nats_prefix), limits=LIMITS, ack_timeout=2.0)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


async def test_run_events_are_stored_in_order_on_the_runs_subject(
    run_events: JetStreamRunEvents, nats_client: NatsClient, nats_prefix: str
) -> None:
    for event in events_of("run-a"):
        run_events.publish(event, "agent-1", 4)
    await run_events.flush("run-a")

    assert run_events.stream == f"{nats_prefix}_RUN_EVENTS".upper()
    messages = await stored(nats_client, run_events.stream)
    assert [m.subject for m in messages] == [f"{nats_prefix}.runs.events.run-a"] * 4
    assert [m.headers[MSG_ID_HEADER] for m in messages] == [f"run-a:{i}" for i in (1, 2, 3, 4)]
    decoded = [run_events_pb2.RunEvent.FromString(m.data) for m in messages]
    assert [(e.run_id, e.sequence, e.type) for e in decoded] == [
        ("run-a", 1, "run_started"),
        ("run-a", 2, "message_delta"),
        ("run-a", 3, "message_delta"),
        ("run-a", 4, "run_completed"),
    ]
    assert {(e.agent_id, e.agent_version) for e in decoded} == {("agent-1", 4)}
    assert decoded[0].event_id == "run-a:1"
    assert decoded[0].occurred_at.ToDatetime(tzinfo=UTC) == NOW
    assert decoded[0].event.run_started.task_id == "task-1"
    assert decoded[0].event.sequence == 1
    assert "".join(e.event.message_delta.content for e in decoded[1:3]) == "Hello"
    assert decoded[3].event.run_completed.usage.total_tokens == 13
    assert run_events.published == 4


async def test_a_repeated_run_event_is_stored_once(
    run_events: JetStreamRunEvents, nats_client: NatsClient
) -> None:
    first, second, _, last = events_of("run-b")
    for event in (first, first, second, first, last):
        run_events.publish(event, "agent-1", 4)
    await run_events.flush("run-b")  # the last event's acknowledgement covers the others

    messages = await stored(nats_client, run_events.stream)
    assert [m.headers[MSG_ID_HEADER] for m in messages] == ["run-b:1", "run-b:2", "run-b:4"]


async def test_stopping_the_sink_sends_what_is_queued(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    sink = JetStreamRunEvents(nats_client, Names(nats_prefix), limits=LIMITS)
    await sink.start()
    for seq in range(1, 101):
        sink.publish(RunEvent("run-c", seq, NOW, MessageDelta(f"t{seq}")), "agent-1", 1)
    await sink.stop()
    assert sink.published == 100

    async def count() -> int:
        info = await nats_client.js.stream_info(sink.stream)
        return int(info.state.messages)

    assert await eventually(lambda: count_is(count, 100), timeout=5)


async def count_is(count: Callable[[], Any], expected: int) -> bool:
    return bool(await count() == expected)


def unconfirmed(caplog: pytest.LogCaptureFixture, run_id: str) -> list[int]:
    """The `up_to` of each "run events not confirmed" warning about the run."""
    return [
        r.up_to  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "run events not confirmed" and getattr(r, "run_id", None) == run_id
    ]


async def test_run_events_are_held_not_waited_for_while_nats_is_down(
    make_nats_server: Callable[[], NatsServer],
) -> None:
    server = make_nats_server()
    async with connected(server.url) as client:
        sink = JetStreamRunEvents(client, Names("down"), limits=LIMITS, ack_timeout=0.5)
        await sink.start()
        try:
            sink.publish(events_of("before")[0], "agent-1", 1)
            await sink.flush("before")
            assert sink.published == 1

            server.stop()
            await disconnected(client)
            for event in events_of("during"):
                sink.publish(event, "agent-1", 1)
            # The run is not held back: flush gives up (the events stay queued).
            await asyncio.wait_for(sink.flush("during"), 10)
            assert sink.published == 1

            # Back up: the held events are sent first, in order, then the next run's.
            server.start()
            await reconnected(client)
            for event in events_of("after"):
                sink.publish(event, "agent-1", 1)
            await sink.flush("after")
            ids = [m.headers[MSG_ID_HEADER] for m in await stored(client, sink.stream)]
            assert ids == ["before:1"] + [f"during:{i}" for i in (1, 2, 3, 4)] + [
                f"after:{i}" for i in (1, 2, 3, 4)
            ]
            assert sink.dropped == 0
        finally:
            await sink.stop(timeout=1)


async def test_run_events_unacknowledged_by_a_frozen_nats_are_given_up_after_the_timeout(
    make_nats_server: Callable[[], NatsServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = make_nats_server()
    async with connected(server.url) as client:
        sink = JetStreamRunEvents(client, Names("frozen"), limits=LIMITS, ack_timeout=0.5)
        await sink.start()
        try:
            sink.publish(events_of("warm")[0], "agent-1", 1)
            await sink.flush("warm")
            caplog.set_level(logging.WARNING, logger="agent_executor.adapters.nats_runs")
            with server.paused():
                for event in events_of("frozen"):
                    sink.publish(event, "agent-1", 1)
                await asyncio.wait_for(sink.flush("frozen"), 10)
            assert unconfirmed(caplog, "frozen") == [4]
            # Unconfirmed is not lost: the thawed server stores them.
            await eventually(lambda: count_of(client, sink.stream, 5), timeout=10)
        finally:
            await sink.stop(timeout=1)


async def count_of(client: NatsClient, stream: str, expected: int) -> bool:
    info = await client.js.stream_info(stream)
    return bool(info.state.messages == expected)


# ------------------------------------------------------------------ cancel bus


class Replica:
    """What one replica's `on_cancel` heard (warm-up messages aside)."""

    def __init__(self) -> None:
        self.heard: list[str] = []
        self.listening = False

    def on_cancel(self, run_id: str) -> bool:
        if run_id == "warm-up":
            self.listening = True
            return False
        self.heard.append(run_id)
        return run_id.startswith("mine")


async def test_a_cancel_broadcast_reaches_every_replica(nats_server: Any, nats_prefix: str) -> None:
    names = Names(nats_prefix)
    a, b = Replica(), Replica()
    async with (
        connected(nats_server.url, "a") as client_a,
        connected(nats_server.url, "b") as client_b,
    ):
        bus_a, bus_b = NatsCancelBus(client_a, names), NatsCancelBus(client_b, names)
        await bus_a.start(a.on_cancel)
        await bus_b.start(b.on_cancel)
        try:

            async def both_listen() -> bool:
                await bus_b.broadcast("warm-up")
                await client_b.nc.flush()
                await bus_a.broadcast("warm-up")
                await client_a.nc.flush()
                await asyncio.sleep(0.05)
                return a.listening and b.listening

            await eventually(both_listen, timeout=5)
            await bus_b.broadcast("run-42")
            await NatsCancelBus(client_b, Names(f"{nats_prefix}x")).broadcast("run-43")
            await bus_a.broadcast("mine-44")
            await eventually(lambda: len(a.heard) >= 2 and len(b.heard) >= 2, timeout=3)
            await asyncio.sleep(0.05)  # nothing else arrives
            assert sorted(a.heard) == ["mine-44", "run-42"]  # two senders: no order between them
            assert sorted(b.heard) == ["mine-44", "run-42"]
        finally:
            await bus_a.close()
            await bus_b.close()


# ------------------------------------------------------------------ registry client


@pytest.fixture
async def registry(tmp_path: Path, nats_server: Any, nats_prefix: str) -> AsyncIterator[Registry]:
    """The real registry (SQLite), its template catalogue holding `simple-test`."""
    async with connected(nats_server.url, "catalogue") as client:
        kv = await open_bucket(client.js, Names(nats_prefix), LIMITS)
        await publish_descriptor(kv, SIMPLE.to_document())
    service = await sqlite_registry(
        tmp_path / "registry.sqlite3", nats_server.url, nats_prefix
    ).start()
    try:
        yield service
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


async def create_agent(stub: rpb_grpc.AgentRegistryStub, **values: Any) -> rpb.Agent:
    """Create an active simple-test agent (once the registry knows the template)."""
    values.setdefault("name", f"agent {time.monotonic_ns()}")
    values.setdefault("template_id", "simple-test")
    deadline = time.monotonic() + 10
    while True:
        try:
            reply = await stub.CreateAgent(
                rpb.CreateAgentRequest(spec=spec(**values), status=rpb.AGENT_STATUS_ACTIVE)
            )
            return reply.agent
        except grpc.aio.AioRpcError as e:
            unknown = any(v.field == "spec.template_id" for v in error_from_rpc(e).violations)
            if not unknown or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def registry_agents(
    target: str, client: NatsClient, prefix: str
) -> AsyncIterator[RegistryAgents]:
    agents = RegistryAgents(target, client, Names(prefix), timeout=2.0)
    await agents.start()
    try:
        yield agents
    finally:
        await agents.close()


async def served_from_cache(agents: RegistryAgents, agent_id: str) -> None:
    """Wait until a lookup of `agent_id` no longer asks the registry (events are followed)."""

    async def cached() -> bool:
        before = agents.fetches
        await agents.get(agent_id)
        return agents.fetches == before

    await eventually(cached, timeout=5)


async def test_the_registry_client_reads_an_agent_and_caches_it(
    registry: Registry, nats_client: NatsClient, nats_prefix: str
) -> None:
    stub = registry.stub()
    created = await create_agent(
        stub,
        template_config={"response_prefix": ">> "},
        system_prompt="Be brief.",
        conversation_config={"memory": True, "historyLength": 5},
        toolsets=["custom", "parse_url"],
        llm_config_id="scripted",
    )
    async with registry_agents(f"127.0.0.1:{registry.port}", nats_client, nats_prefix) as agents:
        agent = await agents.get(created.id)
        assert agents.fetches == 1
        assert (agent.id, agent.version, agent.status, agent.name) == (
            created.id,
            1,
            "active",
            created.spec.name,
        )
        assert agent.runnable
        assert (agent.template_id, agent.template_config) == (
            "simple-test",
            {"response_prefix": ">> "},
        )
        assert agent.system_prompt == "Be brief."
        assert agent.conversation_config == {"memory": True, "historyLength": 5}
        assert agent.memory
        assert agent.toolsets == ("custom", "parse_url")
        assert agent.llm_config_id == "scripted"

        await served_from_cache(agents, created.id)
        fetched = agents.fetches
        for _ in range(3):
            assert await agents.get(created.id) == agent
        assert agents.fetches == fetched


async def test_an_update_event_makes_the_client_read_the_new_version(
    registry: Registry, nats_client: NatsClient, nats_prefix: str
) -> None:
    stub = registry.stub()
    created = await create_agent(stub, system_prompt="Be brief.")
    async with registry_agents(f"127.0.0.1:{registry.port}", nats_client, nats_prefix) as agents:
        await served_from_cache(agents, created.id)
        await nats_client.nc.flush()
        fetched = agents.fetches

        await stub.UpdateAgent(
            rpb.UpdateAgentRequest(
                agent_id=created.id,
                spec=rpb.AgentSpec(system_prompt="Be thorough."),
                update_mask=FieldMask(paths=["system_prompt"]),
            )
        )

        async def new_version() -> bool:
            return (await agents.get(created.id)).version == 2

        await eventually(new_version, timeout=5)
        assert agents.fetches == fetched + 1
        assert (await agents.get(created.id)).system_prompt == "Be thorough."
        assert agents.fetches == fetched + 1  # cached again

        await stub.DeleteAgent(rpb.DeleteAgentRequest(agent_id=created.id))

        async def gone() -> bool:
            try:
                await agents.get(created.id)
            except AgentNotFound:
                return True
            return False

        await eventually(gone, timeout=5)


async def test_concurrent_lookups_of_one_agent_share_one_call(
    registry: Registry, nats_client: NatsClient, nats_prefix: str
) -> None:
    stub = registry.stub()
    first = await create_agent(stub)
    second = await create_agent(stub)
    async with registry_agents(f"127.0.0.1:{registry.port}", nats_client, nats_prefix) as agents:
        await served_from_cache(agents, first.id)
        fetched = agents.fetches
        results = await asyncio.gather(*(agents.get(second.id) for _ in range(10)))
        assert {r.id for r in results} == {second.id}
        assert agents.fetches == fetched + 1

        missing = await asyncio.gather(
            *(agents.get("agt-no-such-agent") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(e, AgentNotFound) for e in missing)
        assert agents.fetches == fetched + 2


async def test_unknown_agents_are_not_found_and_a_missing_registry_is_unavailable(
    registry: Registry, nats_client: NatsClient, nats_prefix: str
) -> None:
    stub = registry.stub()
    created = await create_agent(stub)
    async with registry_agents(f"127.0.0.1:{registry.port}", nats_client, nats_prefix) as agents:
        with pytest.raises(AgentNotFound):
            await agents.get(created.id[:-4] + "zzzz")
        with pytest.raises(AgentNotFound):
            await agents.get("not an id!")
        await served_from_cache(agents, created.id)

        await registry.stop()
        # What is cached (and followed by events) still answers; anything else cannot.
        assert (await agents.get(created.id)).id == created.id
        with pytest.raises(RegistryUnavailable):
            await agents.get("agt-not-cached")

    async with registry_agents(f"127.0.0.1:{free_port()}", nats_client, nats_prefix) as nowhere:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            await nowhere.get(created.id)
        assert time.monotonic() - started < 3


async def test_the_cache_is_not_trusted_while_nats_is_down_and_starts_empty_after(
    registry: Registry, make_nats_server: Callable[[], NatsServer], nats_prefix: str
) -> None:
    stub = registry.stub()
    created = await create_agent(stub)
    own = make_nats_server()  # the executor's NATS, which the test takes away
    async with (
        connected(own.url) as client,
        registry_agents(f"127.0.0.1:{registry.port}", client, nats_prefix) as agents,
    ):
        await served_from_cache(agents, created.id)

        own.stop()
        await disconnected(client)
        fetched = agents.fetches
        for _ in range(3):
            assert (await agents.get(created.id)).id == created.id
        assert agents.fetches == fetched + 3

        own.start()
        await reconnected(client)
        fetched = agents.fetches
        await agents.get(created.id)
        assert agents.fetches == fetched + 1  # what was cached before may be stale: asked again
        await agents.get(created.id)
        assert agents.fetches == fetched + 1


class SlowRegistry(rpb_grpc.AgentRegistryServicer):
    """Answers GetAgent after a pause (to overlap lookups)."""

    def __init__(self) -> None:
        self.calls = 0

    async def GetAgent(self, request: rpb.GetAgentRequest, context: Any) -> rpb.GetAgentResponse:
        self.calls += 1
        await asyncio.sleep(0.3)
        return rpb.GetAgentResponse(
            agent=rpb.Agent(
                id=request.agent_id,
                version=1,
                status=rpb.AGENT_STATUS_ACTIVE,
                spec=rpb.AgentSpec(name="slow", template_id="simple-test"),
            )
        )


async def test_a_cancelled_lookup_does_not_cancel_others_waiting_for_the_same_agent(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    servicer = SlowRegistry()
    server = grpc.aio.server()
    rpb_grpc.add_AgentRegistryServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with registry_agents(f"127.0.0.1:{port}", nats_client, nats_prefix) as agents:
            hung_up = asyncio.create_task(agents.get("agt-1"))
            await asyncio.sleep(0.05)
            waiting = asyncio.create_task(agents.get("agt-1"))
            await asyncio.sleep(0.05)
            hung_up.cancel()
            assert (await waiting).name == "slow"
            assert servicer.calls == 1
    finally:
        await server.stop(0)


# ------------------------------------------------------------------ tools client


@pytest.fixture
async def tools_service(
    tmp_path: Path, nats_server: Any, nats_prefix: str
) -> AsyncIterator[ToolsService]:
    (tmp_path / "workspaces").mkdir()
    service = await ToolsService(
        ToolsSettings(
            port=0,
            nats_url=nats_server.url,
            nats_prefix=nats_prefix,
            service_token=None,
            workspace_root=tmp_path / "workspaces",
            database_url=f"sqlite:///{tmp_path / 'tools.sqlite3'}",
            audit_enabled=False,
        )
    ).start()
    try:
        yield service
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


@contextlib.asynccontextmanager
async def tools_client(target: str, **options: Any) -> AsyncIterator[tuple[GrpcTools, list[int]]]:
    """A GrpcTools client and a counter of the ListTools calls it makes."""
    gateway = GrpcTools(target, timeout=2.0, **options)
    calls: list[int] = []
    list_tools = gateway._stub.ListTools

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return list_tools(*args, **kwargs)

    gateway._stub.ListTools = counting  # type: ignore[method-assign]
    try:
        yield gateway, calls
    finally:
        await gateway.close()


def call_context(key: str = "") -> ToolCallContext:
    return ToolCallContext(
        agent_id="agent-1",
        task_id="task-1",
        run_id="run-1",
        workspace="agent-1",
        idempotency_key=key,
    )


async def test_the_tools_client_lists_tools_with_their_side_effects_and_caches_them(
    tools_service: ToolsService,
) -> None:
    async with tools_client(f"127.0.0.1:{tools_service.port}", list_ttl=0.3) as (gateway, calls):
        first = await asyncio.gather(*(gateway.list_tools() for _ in range(5)))
        assert len(calls) == 1  # concurrent refreshes share one call
        specs = {t.name: t for t in first[0]}
        assert {"read_lines", "create_file", "fetch_url", "parse_url"} <= set(specs)
        assert specs["create_file"].side_effect == "at_most_once"
        assert specs["fetch_url"].side_effect == "idempotent"
        assert specs["read_lines"].side_effect == "read_only"
        assert specs["read_lines"].arguments_schema()["required"] == ["filename"]
        assert specs["parse_url"].description
        assert all(isinstance(t, ToolSpec) for t in first[0])

        assert await gateway.list_tools() == first[0]
        assert len(calls) == 1  # within the TTL
        await asyncio.sleep(0.35)
        assert await gateway.list_tools() == first[0]
        assert len(calls) == 2  # refreshed after it


async def test_a_stale_tool_list_is_served_when_the_tools_service_goes_away(
    tools_service: ToolsService,
) -> None:
    async with tools_client(f"127.0.0.1:{tools_service.port}", list_ttl=0.05) as (gateway, calls):
        listed = await gateway.list_tools()
        await tools_service.stop()
        await asyncio.sleep(0.1)
        assert await gateway.list_tools() == listed
        assert len(calls) == 2  # it did try


async def test_listing_tools_fails_when_the_tools_service_never_answered() -> None:
    async with tools_client(f"127.0.0.1:{free_port()}") as (gateway, _):
        started = time.monotonic()
        with pytest.raises(ToolsUnavailable):
            await gateway.list_tools()
        assert time.monotonic() - started < 3


async def test_the_tools_client_asks_the_sandbox_afresh_each_time(
    tools_service: ToolsService,
) -> None:
    async with tools_client(f"127.0.0.1:{tools_service.port}") as (gateway, calls):
        reported = (await tools_service.stub().ListTools(tools_pb2.ListToolsRequest())).sandbox
        first = await gateway.sandbox()
        assert first == sandbox_info(reported)
        assert first.available == bool(first.isolation)
        assert await gateway.sandbox() == first
        assert len(calls) == 2  # never from the tool list's cache
    async with tools_client(f"127.0.0.1:{free_port()}") as (gone, _):
        with pytest.raises(ToolsUnavailable):
            await gone.sandbox()


def test_the_sandbox_a_tools_service_reports_maps_to_plain_values() -> None:
    reported = tools_pb2.SandboxInfo(
        available=True,
        isolation="bubblewrap",
        runtimes=[
            tools_pb2.SandboxRuntime(language="python", version="3.11.2", modules=["json", "os"])
        ],
        enforcement=["memory:cgroup-v2"],
    )
    assert sandbox_info(reported) == SandboxInfo(
        True, "bubblewrap", "", (SandboxRuntime("python", "3.11.2", ("json", "os")),)
    )
    assert sandbox_info(tools_pb2.SandboxInfo(reason="no bwrap")) == SandboxInfo(
        False, reason="no bwrap"
    )


async def test_tool_invocations_return_content_data_artifacts_and_tool_errors(
    tools_service: ToolsService, tmp_path: Path
) -> None:
    async with tools_client(f"127.0.0.1:{tools_service.port}") as (gateway, _):
        parsed = await gateway.invoke(
            "parse_url", {"url": "https://example.com:8443/a?b=1#top"}, call_context()
        )
        assert parsed.ok
        assert "host: example.com" in parsed.content
        assert parsed.data is not None
        assert (parsed.data["scheme"], parsed.data["port"], parsed.data["query"]) == (
            "https",
            8443,
            {"b": ["1"]},
        )
        assert parsed.artifacts == ()

        arguments = {"filename": "notes/a.txt", "content": "one\ntwo\n"}
        created = await gateway.invoke("create_file", arguments, call_context("k-1"))
        assert created.ok
        assert created.artifacts == ("notes/a.txt",)
        assert not created.replayed
        assert (tmp_path / "workspaces" / "agent-1" / "notes" / "a.txt").read_text() == "one\ntwo\n"
        again = await gateway.invoke("create_file", arguments, call_context("k-1"))
        assert again.replayed
        assert again.artifacts == ("notes/a.txt",)

        read = await gateway.invoke(
            "read_lines", {"filename": "notes/a.txt", "start": 2}, call_context()
        )
        assert (read.content, read.ok) == ("two", True)

        missing = await gateway.invoke("read_lines", {"filename": "nope.txt"}, call_context())
        assert not missing.ok
        assert missing.error_code == "NOT_FOUND"
        assert "nope.txt" in missing.error_message


async def test_refused_tool_calls_raise_the_tools_service_error(
    tools_service: ToolsService,
) -> None:
    async with tools_client(f"127.0.0.1:{tools_service.port}") as (gateway, _):
        with pytest.raises(PermissionDenied) as refused:
            await gateway.invoke("read_lines", {"filename": "../../etc/passwd"}, call_context())
        assert refused.value.reason == "PATH_OUTSIDE_WORKSPACE"

        with pytest.raises(InvalidArgument):
            await gateway.invoke("read_lines", {}, call_context())
        with pytest.raises(InvalidArgument):
            await gateway.invoke("parse_url", {"url": "x", "extra": 1}, call_context())
        with pytest.raises(NotFound) as unknown:
            await gateway.invoke("no_such_tool", {}, call_context())
        assert unknown.value.reason == "TOOL_NOT_FOUND"


# ------------------------------------------------------------------ sessions checkpointer


def chat(saver: Any) -> Any:
    """A graph that answers with how many messages it has seen (its memory, made visible)."""

    def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"seen {len(state['messages'])}")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=saver)


def thread(key: str) -> Any:
    return {"configurable": {"thread_id": key}}


async def say(saver: Any, key: str, text: str) -> list[str]:
    state = await chat(saver).ainvoke({"messages": [HumanMessage(text)]}, thread(key))
    return [str(m.content) for m in state["messages"]]


async def sessions_survive_a_reopen(url: str, schema: str = "public") -> None:
    async with open_checkpointer(url, schema=schema) as saver:
        assert await say(saver, "agent-1:task-1", "first") == ["first", "seen 1"]
    async with open_checkpointer(url, schema=schema) as saver:
        assert await say(saver, "agent-1:task-1", "second") == [
            "first",
            "seen 1",
            "second",
            "seen 3",
        ]
        assert await say(saver, "agent-1:task-2", "other") == ["other", "seen 1"]


async def test_sessions_survive_reopening_the_sqlite_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "sessions.sqlite3"
    await sessions_survive_a_reopen(f"sqlite:///{path}")
    assert path.is_file()


@pytest.mark.parametrize("form", ["url", "keywords"])
async def test_sessions_survive_reopening_the_postgres_checkpointer(
    postgres_db: PostgresDatabase, postgres_schema: str, form: str
) -> None:
    url = (
        f"postgresql://{quote(postgres_db.user)}:{quote(postgres_db.password)}"
        f"@{postgres_db.host}:{postgres_db.port}/{postgres_db.dbname}"
        if form == "url"
        else postgres_db.dsn  # host=... dbname=..., as the run store accepts it too
    )
    schema = f"{postgres_schema}_sessions"  # created by the checkpointer
    try:
        await sessions_survive_a_reopen(url, schema)
        with psycopg.connect(postgres_db.dsn) as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    (schema,),
                )
            }
        assert "checkpoints" in tables
    finally:
        with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize(
    ("url", "schema", "message"),
    [
        ("mysql://db/sessions", "public", "must start with sqlite:/// or postgresql://"),
        ("var/sessions.sqlite3", "public", "must start with sqlite:/// or postgresql://"),
        ("postgresql://nobody@127.0.0.1:1/x", 'x"; DROP', "unusable schema name"),
        ("postgresql://nobody@127.0.0.1:1/x", "", "unusable schema name"),
    ],
)
async def test_a_bad_sessions_url_or_schema_is_refused(url: str, schema: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        async with open_checkpointer(url, schema=schema):
            pass


# ------------------------------------------------------------------ gRPC servicer


class CallContext:
    """A gRPC call's server context, as far as the servicer uses it."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    def time_remaining(self) -> float | None:
        return self.remaining

    def end(self) -> None:
        for callback in self.callbacks:
            callback(self)


class SlowAdmission:
    """A run service whose admission waits for `admit`; it records what is done to runs."""

    def __init__(self) -> None:
        self.admitting = asyncio.Event()
        self.admit = asyncio.Event()
        self.cancelled: list[str] = []
        self.detached: list[str] = []

    async def start(self, request: Any) -> Any:
        self.admitting.set()
        await self.admit.wait()
        runs = self

        class Handle:
            run_id = request.run_id

            def detach(self) -> None:
                runs.detached.append(self.run_id)

        return Handle()

    def cancel_local(self, run_id: str, reason: str = "") -> bool:
        self.cancelled.append(run_id)
        return True


async def left_while_admitted(remaining: float | None) -> SlowAdmission:
    """An Execute call with `detach_on_disconnect` whose caller leaves during admission."""
    from agent_executor.adapters.grpc_api import ExecutorServicer
    from agentrt.executor.v1 import executor_pb2 as pb

    runs = SlowAdmission()
    unused: Any = None
    servicer = ExecutorServicer(runs, unused, unused, unused, unused)  # type: ignore[arg-type]
    context = CallContext(remaining)
    request = pb.ExecuteRequest(
        input=pb.RunInput(
            agent_id="agt", run_id="named", messages=[pb.ChatMessage(role="user", content="hi")]
        ),
        detach_on_disconnect=True,
    )
    call = asyncio.create_task(servicer.Execute(request, context))
    await runs.admitting.wait()
    call.cancel()  # the caller went away: grpc cancels the handler and ends the call
    with contextlib.suppress(asyncio.CancelledError):
        await call
    context.end()
    runs.admit.set()
    await eventually(lambda: runs.detached or runs.cancelled)
    return runs


async def test_a_detached_run_admitted_after_its_caller_left_starts_and_goes_on() -> None:
    runs = await left_while_admitted(remaining=30.0)
    assert (runs.detached, runs.cancelled) == (["named"], [])


async def test_a_detached_run_admitted_after_its_calls_deadline_is_cancelled() -> None:
    runs = await left_while_admitted(remaining=0.0)
    assert (runs.detached, runs.cancelled) == ([], ["named"])
