"""Server interceptors over real gRPC calls: call context, errors, service token."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from agentrt.executor.v1 import executor_pb2 as ex_pb
from agentrt.executor.v1 import executor_pb2_grpc as ex_grpc
from agentrt.registry.v1 import registry_pb2 as pb
from agentrt.registry.v1 import registry_pb2_grpc as pb_grpc
from agentrt_kit.context import (
    clean_header_value,
    current_request_id,
    new_request_id,
    remaining_seconds,
)
from agentrt_kit.errors import FailedPrecondition, Internal, NotFound, Unauthenticated
from agentrt_kit.grpc.interceptors import bearer_token
from agentrt_kit.grpc.server import GrpcServer, ServiceBinding
from agentrt_kit.grpc.status import error_from_rpc

REGISTRY = "agentrt.registry.v1.AgentRegistry"
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def get_request(agent_id: str = "a1") -> pb.GetAgentRequest:
    return pb.GetAgentRequest(agent_id=agent_id)


def stream_request(mode: str) -> ex_pb.ExecuteStreamRequest:
    return ex_pb.ExecuteStreamRequest(input=ex_pb.RunInput(agent_id=mode))


async def headers(call: Any) -> dict[str, str]:
    return {k: v for k, v in await call.initial_metadata() or ()}


async def trailers(call: Any) -> dict[str, str]:
    """Where a unary call's request id comes back (headers would commit the call)."""
    return {k: v for k, v in await call.trailing_metadata() or ()}


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def drain(call: Any) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    """Every streamed item, then the error that ended the stream (None when OK)."""
    items: list[Any] = []
    try:
        async for item in call:
            items.append(item)
    except grpc.aio.AioRpcError as e:
        return items, e
    return items, None


# ------------------------------------------------------------------ request id and actor


async def test_request_id_is_generated_when_absent_and_echoed_in_trailers(service) -> None:
    stub = pb_grpc.AgentRegistryStub(service.raw_channel())
    first = stub.GetAgent(get_request())
    reply = await first
    rid = (await trailers(first))["x-request-id"]
    assert HEX_ID.match(rid)
    assert reply.agent.updated_by == rid  # what the servicer saw via current_request_id()
    assert service.registry.seen[0]["request_id"] == rid
    second = stub.GetAgent(get_request())
    await second
    assert (await trailers(second))["x-request-id"] != rid


async def test_caller_request_id_is_kept(service) -> None:
    stub = pb_grpc.AgentRegistryStub(service.raw_channel())
    call = stub.GetAgent(get_request(), metadata=(("x-request-id", "req-42:a/b@c"),))
    reply = await call
    assert (await trailers(call))["x-request-id"] == "req-42:a/b@c"
    assert reply.agent.updated_by == "req-42:a/b@c"


@pytest.mark.parametrize(
    "unsafe",
    ["has space", "x" * 129, "<script>", "semi;colon", "quote'", ""],
    ids=["space", "too-long", "angle", "semicolon", "quote", "empty"],
)
async def test_unsafe_request_id_is_replaced(service, unsafe: str) -> None:
    stub = pb_grpc.AgentRegistryStub(service.raw_channel())
    call = stub.GetAgent(get_request(), metadata=(("x-request-id", unsafe),))
    reply = await call
    rid = (await trailers(call))["x-request-id"]
    assert rid != unsafe
    assert HEX_ID.match(rid)
    assert reply.agent.updated_by == rid


@pytest.mark.parametrize(
    "value",
    ["id\n", "id\nforged log line", "esc\x1b[31m", "nul\x00", "x" * 129, " lead", "", None],
)
def test_clean_header_value_drops_control_characters_and_long_values(value: str | None) -> None:
    assert clean_header_value(value) is None


@pytest.mark.parametrize(
    "value", ["a", "req-1", "user@example.com", "svc:gateway/x+y=z", "x" * 128]
)
def test_clean_header_value_keeps_safe_values(value: str) -> None:
    assert clean_header_value(value) == value


def test_new_request_ids_are_unique_hex() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(HEX_ID.match(i) for i in ids)


async def test_actor_header_is_visible_to_the_servicer(service) -> None:
    stub = pb_grpc.AgentRegistryStub(service.raw_channel())
    reply = await stub.GetAgent(get_request(), metadata=(("x-actor", "alice@example.com"),))
    assert reply.agent.created_by == "alice@example.com"
    assert service.registry.seen[-1]["actor"] == "alice@example.com"


async def test_the_caller_s_deadline_is_visible_to_the_servicer(service) -> None:
    stub = pb_grpc.AgentRegistryStub(service.raw_channel())
    await stub.GetAgent(get_request(), timeout=7)
    await stub.GetAgent(get_request())
    with_deadline, without = (s["remaining_seconds"] for s in service.registry.seen)
    assert 0 < with_deadline <= 7.5  # the server may see a few ms more than the client set
    assert without is None
    assert remaining_seconds() is None  # reset after the call


async def test_unsafe_or_missing_actor_is_none(service) -> None:
    stub = pb_grpc.AgentRegistryStub(service.raw_channel())
    await stub.GetAgent(get_request(), metadata=(("x-actor", "bob smith"),))
    await stub.GetAgent(get_request())
    assert [s["actor"] for s in service.registry.seen] == [None, None]


async def test_caller_trace_is_continued_by_the_server(service) -> None:
    stub = service.registry_stub()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("client") as span:
        await stub.GetAgent(get_request())
    assert service.registry.seen[0]["trace_id"] == span.get_span_context().trace_id


async def test_each_call_is_logged_with_method_and_code(service, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="agentrt.grpc")
    stub = service.registry_stub()
    await stub.GetAgent(get_request())
    await refused(stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="x")))
    rpcs = [r for r in caplog.records if r.name == "agentrt.grpc" and r.getMessage() == "rpc"]
    assert [(r.method, r.code) for r in rpcs] == [
        (f"/{REGISTRY}/GetAgent", "OK"),
        (f"/{REGISTRY}/DeleteAgent", "NOT_FOUND"),
    ]
    assert all(r.ms >= 0 for r in rpcs)


# ------------------------------------------------------------------ error mapping


async def test_unexpected_error_becomes_internal_without_traceback(service, caplog) -> None:
    stub = service.registry_stub()
    err = await refused(
        stub.UpdateAgent(pb.UpdateAgentRequest(), metadata=(("x-request-id", "req-77"),))
    )
    assert err.code() is grpc.StatusCode.INTERNAL
    assert err.details() == "internal error (request id req-77)"
    everything = err.details() + repr(err.trailing_metadata())
    assert "hunter2" not in everything
    assert "Traceback" not in everything
    assert "RuntimeError" not in everything
    mapped = error_from_rpc(err)
    assert isinstance(mapped, Internal)
    assert mapped.reason == "INTERNAL_ERROR"
    # ... but the details are in the server's log, with the traceback.
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error in rpc"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "hunter2" in str(logged[0].exc_info[1])


async def test_failed_call_carries_the_request_id_in_its_trailers(service) -> None:
    stub = service.registry_stub()
    err = await refused(
        stub.DeleteAgent(pb.DeleteAgentRequest(agent_id="a1"), metadata=(("x-request-id", "r-9"),))
    )
    assert ("x-request-id", "r-9") in tuple(err.trailing_metadata())


async def test_stream_items_arrive_then_the_rich_error(service) -> None:
    stub = service.executor_stub()
    call = stub.ExecuteStream(stream_request("fail"), metadata=(("x-request-id", "s-1"),))
    items, err = await drain(call)
    assert [i.sequence for i in items] == [1, 2]
    assert items[0].message_delta.content == "s-1|None"
    assert err is not None
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    mapped = error_from_rpc(err)
    assert isinstance(mapped, FailedPrecondition)
    assert (mapped.message, mapped.reason, mapped.metadata) == (
        "run limit reached",
        "RUN_LIMIT",
        {"limit": "2"},
    )
    assert (await headers(call))["x-request-id"] == "s-1"


async def test_stream_bug_becomes_internal_after_the_items(service) -> None:
    stub = service.executor_stub()
    call = stub.ExecuteStream(stream_request("boom"), metadata=(("x-request-id", "s-2"),))
    items, err = await drain(call)
    assert [i.sequence for i in items] == [1]
    assert err is not None
    assert err.code() is grpc.StatusCode.INTERNAL
    assert err.details() == "internal error (request id s-2)"
    assert "secret" not in err.details()


async def test_stream_sees_request_id_and_actor(service) -> None:
    stub = service.executor_stub()
    call = stub.ExecuteStream(
        stream_request("ok"), metadata=(("x-request-id", "s-3"), ("x-actor", "carol"))
    )
    items, err = await drain(call)
    assert err is None
    assert [i.sequence for i in items] == [1, 2, 3]
    assert items[0].message_delta.content == "s-3|carol"
    assert (await headers(call))["x-request-id"] == "s-3"


async def test_stream_written_with_context_write_works(make_service) -> None:
    service = await make_service(writer_stream=True)
    stub = service.executor_stub()
    call = stub.ExecuteStream(stream_request("ok"), metadata=(("x-request-id", "w-1"),))
    items, err = await drain(call)
    assert err is None
    assert [i.message_delta.content for i in items] == ["written", "w-1"]
    assert ("x-request-id", "w-1") in tuple(await call.trailing_metadata())


# ------------------------------------------------------------------ service token


@pytest.fixture
async def guarded(make_service) -> Any:
    return await make_service(token="s3cret-token")


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", "Basic s3cret-token"),),
        (("authorization", "Bearer "),),
        (("authorization", "s3cret-token"),),
    ],
    ids=["missing", "wrong", "basic-scheme", "empty", "no-scheme"],
)
async def test_calls_without_the_right_token_are_unauthenticated(guarded, metadata) -> None:
    registry = pb_grpc.AgentRegistryStub(guarded.raw_channel())
    err = await refused(registry.GetAgent(get_request(), metadata=metadata))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    mapped = error_from_rpc(err)
    assert isinstance(mapped, Unauthenticated)
    assert mapped.reason == "INVALID_TOKEN"
    assert guarded.registry.seen == []  # the servicer never ran

    executor = ex_grpc.ExecutorStub(guarded.raw_channel())
    items, stream_err = await drain(executor.ExecuteStream(stream_request("ok"), metadata=metadata))
    assert items == []
    assert stream_err is not None
    assert stream_err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_from_rpc(stream_err).reason == "INVALID_TOKEN"
    assert guarded.executor.seen == []


async def test_wrong_token_through_create_channel_is_refused(guarded) -> None:
    stub = guarded.registry_stub(service_token="not-it")
    err = await refused(stub.GetAgent(get_request()))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_right_token_is_accepted_for_unary_and_stream(guarded) -> None:
    registry = guarded.registry_stub(service_token="s3cret-token")
    assert (await registry.GetAgent(get_request("a7"))).agent.id == "a7"
    executor = guarded.executor_stub(service_token="s3cret-token")
    items, err = await drain(executor.ExecuteStream(stream_request("ok")))
    assert err is None
    assert len(items) == 3


async def test_bearer_scheme_is_case_insensitive(guarded) -> None:
    stub = pb_grpc.AgentRegistryStub(guarded.raw_channel())
    reply = await stub.GetAgent(get_request(), metadata=(("authorization", "bearer s3cret-token"),))
    assert reply.agent.id == "a1"


async def test_health_and_reflection_need_no_token(guarded) -> None:
    channel = guarded.raw_channel()
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=REGISTRY))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in call for s in r.list_services_response.service]
    assert REGISTRY in names


async def test_without_a_configured_token_every_call_passes(service) -> None:
    stub = pb_grpc.AgentRegistryStub(service.raw_channel())
    assert (await stub.GetAgent(get_request())).agent.id == "a1"
    stub_with_junk = pb_grpc.AgentRegistryStub(service.raw_channel())
    reply = await stub_with_junk.GetAgent(get_request(), metadata=(("authorization", "Bearer x"),))
    assert reply.agent.id == "a1"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("", None),
    ],
)
def test_bearer_token_parsing(header: str, token: str | None) -> None:
    assert bearer_token({"authorization": header}) == token


def test_bearer_token_absent() -> None:
    assert bearer_token({}) is None


async def test_servicer_abort_keeps_its_own_status(service) -> None:
    items, err = await drain(service.executor_stub().ExecuteStream(stream_request("abort")))
    assert [i.sequence for i in items] == [1]
    assert err is not None
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "quota used up"


async def test_binary_metadata_does_not_disturb_the_call(service) -> None:
    stub = pb_grpc.AgentRegistryStub(service.raw_channel())
    reply = await stub.GetAgent(
        get_request(), metadata=(("blob-bin", b"\x00\xff"), ("x-actor", "eve"))
    )
    assert reply.agent.created_by == "eve"


# ------------------------------------------------------------------ client streaming


async def test_client_streaming_calls_get_context_and_error_mapping(make_service) -> None:
    """No agentrt proto has a client stream yet; a generic handler stands in for one."""

    async def total(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        size = 0
        async for chunk in requests:
            if chunk == b"missing":
                raise NotFound("chunk store gone", reason="STORE_NOT_FOUND")
            size += len(chunk)
        return f"{size}|{current_request_id()}".encode()

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "kit.test.Upload", {"Total": grpc.stream_unary_rpc_method_handler(total)}
                )
            ]
        )

    server = GrpcServer([ServiceBinding("kit.test.Upload", register)])
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            upload = channel.stream_unary("/kit.test.Upload/Total")
            reply = await upload(iter([b"ab", b"cde"]), metadata=(("x-request-id", "up-1"),))
            assert reply == b"5|up-1"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await upload(iter([b"ab", b"missing"]))
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
            assert error_from_rpc(info.value).reason == "STORE_NOT_FOUND"
    finally:
        await server.stop(0)


async def test_a_method_the_service_lacks_is_unimplemented_not_internal(service, caplog) -> None:
    stub = service.executor_stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CancelRun(ex_pb.CancelRunRequest(run_id="r1"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error_from_rpc(info.value).reason == "UNIMPLEMENTED"
    assert "unhandled error" not in caplog.text


async def test_a_stream_the_client_leaves_ends_without_an_error_logged(
    service, caplog: pytest.LogCaptureFixture
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    stub = ex_grpc.ExecutorStub(channel)
    call = stub.ExecuteStream(stream_request("hang"), metadata=(("x-request-id", "gone-1"),))
    first = await call.read()
    assert first.sequence == 1
    await channel.close()  # the client goes away mid-stream (as an SSE reader that disconnects)
    await asyncio.sleep(0.3)
    gc.collect()  # an exception nobody retrieved is reported when its task is collected
    await asyncio.sleep(0)
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert problems == [], [r.getMessage() for r in problems]
