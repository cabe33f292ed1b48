"""Shutdown waiting and the service entry point."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import AsyncExitStack

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentrt.registry.v1 import registry_pb2 as pb
from agentrt.registry.v1 import registry_pb2_grpc as pb_grpc
from agentrt_kit.grpc.client import create_channel
from agentrt_kit.grpc.server import GrpcServer, ServiceBinding
from agentrt_kit.lifecycle import run, serve_until_stopped, wait_for_shutdown
from agentrt_kit.settings import ConfigError


async def test_wait_for_shutdown_returns_when_the_stop_event_is_set() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await asyncio.wait_for(wait_for_shutdown(stop), 5) == "stop requested"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_wait_for_shutdown_returns_on_a_signal(sig: signal.Signals) -> None:
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), sig)
    assert await asyncio.wait_for(wait_for_shutdown(), 5) == sig.name
    # The handlers are removed again: a later Ctrl-C interrupts as usual.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_run_exits_2_with_the_message_on_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        raise ConfigError("invalid configuration: AGENTRT_LOG_FORMAT: bad")

    with pytest.raises(SystemExit) as info:
        run(main)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: invalid configuration: AGENTRT_LOG_FORMAT: bad\n"


def test_run_runs_main_to_completion() -> None:
    ran: list[bool] = []

    async def main() -> None:
        await asyncio.sleep(0)
        ran.append(True)

    run(main)
    assert ran == [True]


def test_run_lets_other_errors_through() -> None:
    async def main() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run(main)


class Registry(pb_grpc.AgentRegistryServicer):
    """GetAgent answers at once; ListAgents after `page_size` milliseconds."""

    async def GetAgent(self, request: pb.GetAgentRequest, context: object) -> object:
        return pb.GetAgentResponse(agent=pb.Agent(id=request.agent_id))

    async def ListAgents(self, request: pb.ListAgentsRequest, context: object) -> object:
        await asyncio.sleep(request.page_size / 1000)
        return pb.ListAgentsResponse(next_page_token="done")


async def test_a_stopping_server_takes_calls_for_the_delay_then_refuses_them() -> None:
    registry = Registry()
    server = GrpcServer(
        [
            ServiceBinding(
                "agentrt.registry.v1.AgentRegistry",
                lambda s: pb_grpc.add_AgentRegistryServicer_to_server(registry, s),
            )
        ]
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    closed: list[float] = []

    async def serve() -> None:
        async with AsyncExitStack() as stack:
            stack.callback(lambda: closed.append(time.monotonic()))  # a dependency
            await serve_until_stopped(
                stack, server, grace=5, stop=stop, delay=0.5, on_ready=lambda _: ready.set()
            )

    serving = asyncio.create_task(serve())
    await ready.wait()
    channel = create_channel(f"127.0.0.1:{server.port}")
    try:
        stub = pb_grpc.AgentRegistryStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        stop.set()
        signalled = time.monotonic()
        await asyncio.sleep(0.1)
        # NOT_SERVING at once, but a call on its way now is still served...
        status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        slow = asyncio.ensure_future(stub.ListAgents(pb.ListAgentsRequest(page_size=800)))
        assert (await stub.GetAgent(pb.GetAgentRequest(agent_id="late"), timeout=1)).agent.id
        await asyncio.sleep(0.6)
        # ...until the delay is over; then new calls are refused, those in flight finish.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetAgent(pb.GetAgentRequest(agent_id="later"), timeout=1)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert (await slow).next_page_token == "done"
        await asyncio.wait_for(serving, 5)
        assert closed[0] - signalled >= 0.5  # dependencies closed after the server stopped
    finally:
        await channel.close()
