"""create_channel: deadlines, metadata, trace context and retries, seen by a real server."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from agentrt.executor.v1 import executor_pb2 as ex_pb
from agentrt.registry.v1 import registry_pb2 as pb
from agentrt.registry.v1 import registry_pb2_grpc as pb_grpc
from agentrt_kit.context import actor_var, request_id_var
from agentrt_kit.grpc.client import create_channel, retry_service_config
from agentrt_kit.grpc.status import error_from_rpc

REGISTRY = "agentrt.registry.v1.AgentRegistry"
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


# ------------------------------------------------------------------ deadlines


async def test_default_deadline_applies_when_the_caller_gives_none(service) -> None:
    stub = service.registry_stub(default_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListAgents(pb.ListAgentsRequest(page_size=3000))
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    assert 0 < service.registry.seen[0]["time_remaining"] < 0.3


async def test_explicit_timeout_wins_over_the_default(service) -> None:
    stub = service.registry_stub(default_timeout=0.1)
    reply = await stub.ListAgents(pb.ListAgentsRequest(page_size=300), timeout=5)
    assert reply.next_page_token == "done"
    assert service.registry.seen[0]["time_remaining"] > 4


async def test_streaming_calls_get_the_default_deadline_too(service) -> None:
    stub = service.executor_stub(default_timeout=3)
    items = [i async for i in stub.ExecuteStream(ex_pb.ExecuteStreamRequest())]
    assert len(items) == 3
    assert 0 < service.executor.seen[0]["time_remaining"] < 3.5


# ------------------------------------------------------------------ metadata


async def test_service_token_is_sent_as_bearer(service) -> None:
    stub = service.registry_stub(service_token="tok-1")
    await stub.GetAgent(pb.GetAgentRequest())
    assert service.registry.seen[0]["metadata"]["authorization"] == "Bearer tok-1"


async def test_no_authorization_header_without_a_token(service) -> None:
    stub = service.registry_stub()
    await stub.GetAgent(pb.GetAgentRequest())
    assert "authorization" not in service.registry.seen[0]["metadata"]


async def test_request_id_and_actor_follow_the_current_call(service) -> None:
    stub = service.registry_stub()
    rid_token, actor_token = request_id_var.set("upstream-1"), actor_var.set("alice")
    try:
        reply = await stub.GetAgent(pb.GetAgentRequest())
    finally:
        request_id_var.reset(rid_token)
        actor_var.reset(actor_token)
    seen = service.registry.seen[0]
    assert seen["metadata"]["x-request-id"] == "upstream-1"
    assert seen["metadata"]["x-actor"] == "alice"
    assert (reply.agent.updated_by, reply.agent.created_by) == ("upstream-1", "alice")


async def test_without_context_a_fresh_request_id_is_sent_and_no_actor(service) -> None:
    stub = service.registry_stub()
    await stub.GetAgent(pb.GetAgentRequest())
    await stub.GetAgent(pb.GetAgentRequest())
    first, second = (s["metadata"] for s in service.registry.seen)
    assert HEX_ID.match(first["x-request-id"])
    assert first["x-request-id"] != second["x-request-id"]
    assert "x-actor" not in first


async def test_explicit_call_metadata_wins_over_the_context(service) -> None:
    stub = service.registry_stub()
    rid_token, actor_token = request_id_var.set("from-context"), actor_var.set("ctx-actor")
    try:
        await stub.GetAgent(
            pb.GetAgentRequest(), metadata=(("x-request-id", "explicit"), ("x-actor", "bob"))
        )
    finally:
        request_id_var.reset(rid_token)
        actor_var.reset(actor_token)
    md = service.registry.seen[0]["metadata"]
    assert (md["x-request-id"], md["x-actor"]) == ("explicit", "bob")


async def test_stream_calls_carry_the_same_metadata(service) -> None:
    stub = service.executor_stub(service_token="tok-2")
    token = request_id_var.set("stream-rid")
    try:
        items = [i async for i in stub.ExecuteStream(ex_pb.ExecuteStreamRequest())]
    finally:
        request_id_var.reset(token)
    assert items[0].message_delta.content == "stream-rid|None"
    assert service.executor.seen[0]["metadata"]["authorization"] == "Bearer tok-2"


async def test_trace_context_is_injected(service) -> None:
    stub = service.registry_stub()
    with TracerProvider().get_tracer("t").start_as_current_span("caller") as span:
        await stub.GetAgent(pb.GetAgentRequest())
    ctx = span.get_span_context()
    traceparent = service.registry.seen[0]["metadata"]["traceparent"]
    assert traceparent.split("-")[1] == format(ctx.trace_id, "032x")
    assert traceparent.split("-")[2] == format(ctx.span_id, "016x")


async def test_no_traceparent_without_an_active_span(service) -> None:
    stub = service.registry_stub()
    await stub.GetAgent(pb.GetAgentRequest())
    assert "traceparent" not in service.registry.seen[0]["metadata"]


# ------------------------------------------------------------------ retries


def test_retry_service_config_lists_the_idempotent_methods() -> None:
    config = json.loads(
        retry_service_config("pkg.Svc", ["Get", "List"], max_attempts=3, initial_backoff=0.1)
    )
    (method_config,) = config["methodConfig"]
    assert method_config["name"] == [
        {"service": "pkg.Svc", "method": "Get"},
        {"service": "pkg.Svc", "method": "List"},
    ]
    policy = method_config["retryPolicy"]
    assert policy["maxAttempts"] == 3
    assert policy["initialBackoff"] == "0.1s"
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]


async def test_idempotent_method_is_retried_on_unavailable(service) -> None:
    stub = service.registry_stub(service_config=retry_service_config(REGISTRY, ["CreateAgent"]))
    reply = await stub.CreateAgent(pb.CreateAgentRequest())
    assert reply.agent.id == "made"
    assert service.registry.attempts["CreateAgent"] == 3


async def test_method_not_listed_is_not_retried(service) -> None:
    stub = service.registry_stub(service_config=retry_service_config(REGISTRY, ["CreateAgent"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetAgentStatus(pb.SetAgentStatusRequest())
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert error_from_rpc(info.value).reason == "DEPENDENCY_DOWN"
    assert service.registry.attempts["SetAgentStatus"] == 1


async def test_retries_stop_at_max_attempts(service) -> None:
    config = retry_service_config(REGISTRY, ["CreateAgent"], max_attempts=2)
    stub = service.registry_stub(service_config=config)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateAgent(pb.CreateAgentRequest())
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert service.registry.attempts["CreateAgent"] == 2


async def test_without_a_service_config_nothing_is_retried(service) -> None:
    stub = service.registry_stub()
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.CreateAgent(pb.CreateAgentRequest())
    assert service.registry.attempts["CreateAgent"] == 1


# ------------------------------------------------------------------ balancing


async def test_calls_are_spread_over_every_address_of_the_target(make_service) -> None:
    first, second = await make_service(), await make_service()
    channel = create_channel(f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}")
    first.channels.append(channel)
    stub = pb_grpc.AgentRegistryStub(channel)
    for _ in range(20):
        await stub.GetAgent(pb.GetAgentRequest())
    assert len(first.registry.seen) >= 5
    assert len(second.registry.seen) >= 5


# ------------------------------------------------------------------ reconnecting


async def test_calls_succeed_within_about_a_second_of_a_server_coming_back(
    make_service: Any,
) -> None:
    first = await make_service()
    stub = first.registry_stub(default_timeout=2)
    await stub.GetAgent(pb.GetAgentRequest())
    await first.server.stop(0)
    # Down long enough for gRPC's default backoff (1 s growing by 1.6 times) to pass 2.5 s.
    down_until = time.monotonic() + 6.0
    while time.monotonic() < down_until:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetAgent(pb.GetAgentRequest())
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(0.1)

    await make_service(port=first.port)  # the same address, serving again
    back = time.monotonic()
    refusals: list[grpc.StatusCode] = []
    while True:
        try:
            await stub.GetAgent(pb.GetAgentRequest())
            break
        except grpc.aio.AioRpcError as e:
            refusals.append(e.code())
            assert time.monotonic() - back < 5.0, f"never reconnected: {refusals[-3:]}"
            await asyncio.sleep(0.02)
    assert set(refusals) <= {grpc.StatusCode.UNAVAILABLE}
    # The backoff is capped at 0.8 s (+20 % jitter); a loaded machine gets some slack.
    assert time.monotonic() - back < 1.5
