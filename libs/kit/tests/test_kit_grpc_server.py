"""GrpcServer: health, reflection, graceful stop, port binding."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentrt.registry.v1 import registry_pb2 as pb
from agentrt_kit.grpc.server import GrpcServer, ServiceBinding

REGISTRY = "agentrt.registry.v1.AgentRegistry"
EXECUTOR = "agentrt.executor.v1.Executor"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(service: Any, name: str) -> int:
    stub = health_pb2_grpc.HealthStub(service.channel())
    return (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status


async def test_health_is_serving_for_the_server_and_each_service(service) -> None:
    for name in ("", REGISTRY, EXECUTOR):
        assert await health_of(service, name) == SERVING


async def test_health_of_an_unknown_service_is_not_found(service) -> None:
    stub = health_pb2_grpc.HealthStub(service.channel())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.Such"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_set_serving_switches_every_service(service) -> None:
    await service.server.set_serving(False)
    for name in ("", REGISTRY, EXECUTOR):
        assert await health_of(service, name) == NOT_SERVING
    await service.server.set_serving(True)
    for name in ("", REGISTRY, EXECUTOR):
        assert await health_of(service, name) == SERVING


async def test_reflection_lists_the_services(service) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(service.channel())
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in call for s in r.list_services_response.service}
    assert names == {
        REGISTRY,
        EXECUTOR,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_names_lists_the_bindings(service) -> None:
    assert service.server.names == [REGISTRY, EXECUTOR]
    assert service.port > 0
    assert service.server.port == service.port


async def test_stop_reports_not_serving_before_the_server_goes(service) -> None:
    # A slow call keeps the server in its grace period while we look at health.
    slow = service.registry_stub().ListAgents(pb.ListAgentsRequest(page_size=400))
    await service.registry.slow_started.wait()
    watch = health_pb2_grpc.HealthStub(service.channel()).Watch(
        health_pb2.HealthCheckRequest(service=REGISTRY)
    )
    updates = aiter(watch)
    assert (await anext(updates)).status == SERVING
    stopping = asyncio.create_task(service.server.stop(5))
    assert (await anext(updates)).status == NOT_SERVING
    watch.cancel()  # an open watch would hold the server for the whole grace
    assert not stopping.done()  # still finishing the in-flight call
    assert (await slow).next_page_token == "done"
    await stopping
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health_pb2_grpc.HealthStub(service.channel()).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_in_flight_call_finishes_during_graceful_stop(service) -> None:
    slow = asyncio.ensure_future(
        service.registry_stub().ListAgents(pb.ListAgentsRequest(page_size=300))
    )
    await service.registry.slow_started.wait()
    started = time.monotonic()
    stopping = asyncio.create_task(service.server.stop(5))
    await asyncio.sleep(0.05)
    # New calls are refused while the in-flight one finishes.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.registry_stub().GetAgent(pb.GetAgentRequest(agent_id="late"), timeout=1)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    await stopping
    assert 0.15 < time.monotonic() - started < 3  # waited for the call, not the whole grace
    assert (await slow).next_page_token == "done"
    assert service.registry.slow_finished.is_set()


async def test_stop_does_not_wait_past_the_grace(service) -> None:
    slow = asyncio.ensure_future(
        service.registry_stub().ListAgents(pb.ListAgentsRequest(page_size=10_000))
    )
    await service.registry.slow_started.wait()
    started = time.monotonic()
    await service.server.stop(0.2)
    assert time.monotonic() - started < 2
    with pytest.raises(grpc.aio.AioRpcError):
        await slow
    assert not service.registry.slow_finished.is_set()


async def test_wait_for_termination_returns_after_stop(service) -> None:
    waiter = asyncio.create_task(service.server.wait_for_termination())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await service.server.stop(0)
    await asyncio.wait_for(waiter, 5)


async def test_binding_a_busy_port_fails(make_service) -> None:
    first = await make_service()
    second = GrpcServer([ServiceBinding(REGISTRY, lambda s: None)], port=first.port)
    with pytest.raises(OSError, match=f"cannot bind gRPC server to 127.0.0.1:{first.port}"):
        await second.start()
    # The first server is unaffected.
    assert await health_of(first, "") == SERVING
