"""Concurrency, crashes and outages, over real gRPC with real NATS, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import nats
import pytest
from registry_support import SIMPLE, Registry, proto_spec

from agent_registry.config import Settings
from agentrt.events.v1 import registry_events_pb2
from agentrt.registry.v1 import registry_pb2 as pb
from agentrt_kit.catalog import open_bucket, publish_descriptor
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.nats import Names
from agentrt_testkit.nats_server import NatsServer


async def create(stub: Any, agent_id: str, **spec: Any) -> pb.Agent:
    reply = await stub.CreateAgent(
        pb.CreateAgentRequest(agent_id=agent_id, spec=proto_spec(**spec))
    )
    return reply.agent


async def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", await call
    except grpc.aio.AioRpcError as e:
        return error_from_rpc(e).reason, e


async def test_sixteen_writers_with_expected_version_one_wins(stub: Any) -> None:
    await create(stub, "a1")
    calls = [
        stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent_id="a1", spec=pb.AgentSpec(description=f"w{i}"), expected_version=1
            )
        )
        for i in range(16)
    ]
    results = await asyncio.gather(*(outcome(c) for c in calls))
    reasons = sorted(r for r, _ in results)
    assert reasons.count("ok") == 1
    assert reasons.count("VERSION_MISMATCH") == 15
    agent = (await stub.GetAgent(pb.GetAgentRequest(agent_id="a1"))).agent
    winner = next(reply for reason, reply in results if reason == "ok")
    assert agent.version == 2
    assert agent.spec.description == winner.agent.spec.description


async def test_sixteen_writers_without_expected_version_lose_no_update(
    registry: Registry,
) -> None:
    # Two replicas of the registry on the same store, eight writers on each.
    other = await Registry(registry.settings).start()
    try:
        stubs = [registry.stub(), other.stub()]
        await create(stubs[0], "a1")
        calls = [
            stubs[i % 2].UpdateAgent(
                pb.UpdateAgentRequest(agent_id="a1", spec=pb.AgentSpec(description=f"w{i}"))
            )
            for i in range(16)
        ]
        results = await asyncio.gather(*(outcome(c) for c in calls))
        assert [r for r, _ in results] == ["ok"] * 16
        history = await stubs[1].ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a1"))
        changes = history.events[1:]
        assert [e.version for e in changes] == list(range(2, 18))
        assert sorted(e.changes["description"] for e in changes) == sorted(
            f"w{i}" for i in range(16)
        )
    finally:
        await other.stop()


async def test_concurrent_creates_of_one_name_have_one_winner(registry: Registry) -> None:
    other = await Registry(registry.settings).start()
    try:
        stubs = [registry.stub(), other.stub()]
        calls = [create(stubs[i % 2], f"agent-{i}", name="The One") for i in range(16)]
        results = await asyncio.gather(*(outcome(c) for c in calls))
        reasons = [r for r, _ in results]
        assert reasons.count("ok") == 1
        assert reasons.count("NAME_TAKEN") == 15
        listed = await stubs[0].ListAgents(pb.ListAgentsRequest())
        assert len(listed.agents) == 1
        assert listed.agents[0].spec.name == "The One"
    finally:
        await other.stop()


async def test_concurrent_creates_of_one_id_have_one_winner(stub: Any) -> None:
    calls = [create(stub, "same-id", name=f"name {i}") for i in range(16)]
    reasons = [r for r, _ in await asyncio.gather(*(outcome(c) for c in calls))]
    assert reasons.count("ok") == 1
    assert reasons.count("AGENT_ALREADY_EXISTS") == 15


async def test_restart_keeps_state(registry: Registry) -> None:
    stub = registry.stub()
    await create(stub, "a1", name="Persistent")
    await stub.SetAgentStatus(
        pb.SetAgentStatusRequest(agent_id="a1", status=pb.AGENT_STATUS_ACTIVE)
    )
    await create(stub, "a2", name="Doomed")
    await stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="a2"))
    before = (await stub.GetAgent(pb.GetAgentRequest(agent_id="a1"))).agent

    await registry.stop()
    await registry.start()
    stub = registry.stub()

    after = (await stub.GetAgent(pb.GetAgentRequest(agent_id="a1"))).agent
    assert after == before
    listed = await stub.ListAgents(pb.ListAgentsRequest())
    assert [a.id for a in listed.agents] == ["a1"]
    history = await stub.ListAgentEvents(pb.ListAgentEventsRequest(agent_id="a2"))
    assert [e.type for e in history.events] == ["registered", "deleted"]
    assert (await create(stub, "a3", name="doomed")).id == "a3"
    code, _ = (await outcome(create(stub, "a4", name="persistent")))[1].code(), None
    assert code == grpc.StatusCode.ALREADY_EXISTS


async def test_service_token_is_required_when_configured(
    make_settings: Callable[..., Settings], catalog_kv: Any
) -> None:
    service = await Registry(make_settings(service_token="s3cret")).start()
    try:
        for stub in (service.stub(), service.stub(token="wrong")):
            code = (await outcome(stub.ListAgents(pb.ListAgentsRequest())))[1].code()
            assert code == grpc.StatusCode.UNAUTHENTICATED
        ok = await service.stub(token="s3cret").ListAgents(pb.ListAgentsRequest())
        assert list(ok.agents) == []
    finally:
        await service.stop()


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "\x00null"},
        {"name": "x" * 10_000},
        {
            "template_config": {
                "deep": {
                    "a": {
                        "b": {
                            "c": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
                        }
                    }
                }
            }
        },
        {"template_config": {"response_prefix": 1e308}},
        {"conversation_config": {"temperature": "hot", "max_tokens": 1.5}},
        {"metadata": {"k\x00": "v"}},
        {"system_prompt": "p" * 300_000},
        {"toolsets": [""] * 100},
        {"template_id": "../../etc/passwd"},
        {"template_version_id": "1.0.0/../../x"},
        {"avatar_url": "javascript:alert(1)"},
    ],
)
async def test_bad_input_is_invalid_argument_never_internal(stub: Any, bad: dict[str, Any]) -> None:
    reason, error = await outcome(create(stub, "a1", **bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (reason, error.details())
    code, _ = (await outcome(stub.GetAgent(pb.GetAgentRequest(agent_id="a1"))))[1].code(), None
    assert code == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------- NATS outages


@pytest.fixture
async def own_nats(make_nats_server: Callable[[], NatsServer]) -> NatsServer:
    return make_nats_server()


@pytest.fixture
async def registry_on_own_nats(
    make_settings: Callable[..., Settings], own_nats: NatsServer, nats_prefix: str
) -> AsyncIterator[Registry]:
    nc = await nats.connect(own_nats.url)
    await publish_descriptor(
        await open_bucket(nc.jetstream(), Names(nats_prefix), Settings().catalog_limits()),
        SIMPLE.to_document(),
    )
    await nc.close()
    service = await Registry(make_settings(nats_url=own_nats.url)).start()
    try:
        yield service
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


async def stream_events(url: str, prefix: str, expected: int, timeout: float = 20.0) -> list[Any]:
    """All messages of the registry stream once it holds `expected` (or the timeout passes)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = Names(prefix).stream("registry")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                if (await js.stream_info(stream)).state.messages >= expected:
                    break
            await asyncio.sleep(0.1)
        info = await js.stream_info(stream)
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            messages.append(await js.get_msg(stream, seq=seq))
        return messages
    finally:
        await nc.close()


def decode(messages: list[Any]) -> list[registry_events_pb2.AgentChanged]:
    out = []
    for m in messages:
        event = registry_events_pb2.AgentChanged()
        event.ParseFromString(m.data)
        out.append(event)
    return out


async def test_relay_publishes_every_event_once_across_a_nats_outage(
    registry_on_own_nats: Registry, own_nats: NatsServer, nats_prefix: str
) -> None:
    stub = registry_on_own_nats.stub()
    await create(stub, "a1", name="first")  # also caches the template descriptor
    assert len(await stream_events(own_nats.url, nats_prefix, 1)) == 1

    own_nats.stop()
    for i in range(5):
        await stub.UpdateAgent(
            pb.UpdateAgentRequest(agent_id="a1", spec=pb.AgentSpec(description=f"offline {i}"))
        )
    await create(stub, "a2", name="second")
    await stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="a2"))
    # Restart the registry too while NATS is still down: the relay resumes from the store.
    await registry_on_own_nats.stop()
    await registry_on_own_nats.start()
    stub = registry_on_own_nats.stub()
    await stub.SetAgentStatus(
        pb.SetAgentStatusRequest(agent_id="a1", status=pb.AGENT_STATUS_ACTIVE)
    )
    own_nats.start()

    events = decode(await stream_events(own_nats.url, nats_prefix, 9))
    assert [(e.agent_id, e.version, e.type) for e in events] == [
        ("a1", 1, "registered"),
        *[("a1", v, "configuration_changed") for v in range(2, 7)],
        ("a2", 1, "registered"),
        ("a2", 2, "deleted"),
        ("a1", 7, "status_changed"),
    ]
    positions = [e.position for e in events]
    assert positions == sorted(set(positions))
    assert len({e.event_id for e in events}) == len(events)
    # Later restarts publish nothing again.
    await registry_on_own_nats.stop()
    await registry_on_own_nats.start()
    await create(registry_on_own_nats.stub(), "a3", name="third")
    events = decode(await stream_events(own_nats.url, nats_prefix, 10))
    assert len(events) == 10
    assert events[-1].agent_id == "a3"


async def test_unknown_template_while_nats_is_down_is_unavailable(
    registry_on_own_nats: Registry, own_nats: NatsServer
) -> None:
    stub = registry_on_own_nats.stub()
    await create(stub, "a1")
    own_nats.stop()
    reason, error = await outcome(create(stub, "a2", name="other", template_id="never-seen"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert reason == "TEMPLATE_CATALOG_UNAVAILABLE"
    # Known templates keep validating from the cache; reads and writes keep working.
    assert (await create(stub, "a3", name="third")).version == 1


# ------------------------------------------------------------------- roles


async def stream_size(url: str, prefix: str) -> int:
    nc = await nats.connect(url)
    try:
        return int(
            (await nc.jetstream().stream_info(Names(prefix).stream("registry"))).state.messages
        )
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


async def test_api_and_worker_roles_split_the_work(
    make_settings: Callable[..., Settings], catalog_kv: Any, nats_server: Any, nats_prefix: str
) -> None:
    api = await Registry(make_settings(role="api")).start()
    worker: Registry | None = None
    try:
        stub = api.stub()
        await create(stub, "a1", name="Split")
        await stub.SetAgentStatus(
            pb.SetAgentStatusRequest(agent_id="a1", status=pb.AGENT_STATUS_ACTIVE)
        )
        # No follower runs in the API role, yet a list reads its own writes.
        listed = await stub.ListAgents(pb.ListAgentsRequest(status=pb.AGENT_STATUS_ACTIVE))
        assert [a.id for a in listed.agents] == ["a1"]
        await asyncio.sleep(1.0)
        assert await stream_size(nats_server.url, nats_prefix) == 0  # the API role relays nothing

        worker = await Registry(make_settings(role="worker")).start()
        code = (await outcome(worker.stub().ListAgents(pb.ListAgentsRequest())))[1].code()
        assert code == grpc.StatusCode.UNIMPLEMENTED  # a worker serves health only
        events = decode(await stream_events(nats_server.url, nats_prefix, 2))
        assert [(e.agent_id, e.type) for e in events] == [
            ("a1", "registered"),
            ("a1", "status_changed"),
        ]
    finally:
        await api.stop()
        if worker is not None:
            await worker.stop()
