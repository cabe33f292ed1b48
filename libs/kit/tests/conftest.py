"""Real gRPC services for the kit's tests.

`make_service` starts a `GrpcServer` on a free port with two small servicers of
the generated protos (registry: unary calls; executor: a server stream) whose
methods each show one behaviour: echo the call context, raise a rich error,
raise a plain bug, sleep, fail UNAVAILABLE a few times. Channels made through
`Service.channel` are `create_channel` channels, closed after the test.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry import trace

from agentrt.executor.v1 import executor_pb2 as ex_pb
from agentrt.executor.v1 import executor_pb2_grpc as ex_grpc
from agentrt.registry.v1 import registry_pb2 as pb
from agentrt.registry.v1 import registry_pb2_grpc as pb_grpc
from agentrt_kit.context import current_actor, current_request_id, remaining_seconds
from agentrt_kit.errors import FailedPrecondition, FieldViolation, NotFound, Unavailable, invalid
from agentrt_kit.grpc.client import create_channel
from agentrt_kit.grpc.server import GrpcServer, ServiceBinding

REGISTRY = "agentrt.registry.v1.AgentRegistry"
EXECUTOR = "agentrt.executor.v1.Executor"


def _seen(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    span = trace.get_current_span().get_span_context()
    return {
        "request_id": current_request_id(),
        "actor": current_actor(),
        "metadata": {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)},
        "trace_id": span.trace_id if span.is_valid else None,
        "time_remaining": context.time_remaining(),
        "remaining_seconds": remaining_seconds(),
    }


class RegistryProbe(pb_grpc.AgentRegistryServicer):
    """One behaviour per method; records what each call saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.attempts: Counter[str] = Counter()
        self.slow_started = asyncio.Event()
        self.slow_finished = asyncio.Event()

    async def GetAgent(self, request: pb.GetAgentRequest, context: Any) -> pb.GetAgentResponse:
        """Echo: the servicer sees the request id and actor through contextvars."""
        self.seen.append(_seen(context))
        return pb.GetAgentResponse(
            agent=pb.Agent(
                id=request.agent_id,
                created_by=current_actor() or "",
                updated_by=current_request_id() or "",
            )
        )

    async def DeleteAgent(self, request: pb.DeleteAgentRequest, context: Any) -> Any:
        """A refusal with every kind of rich detail."""
        raise NotFound(
            f"agent {request.agent_id} does not exist",
            reason="AGENT_NOT_FOUND",
            violations=[FieldViolation("agent_id", "no such agent")],
            metadata={"agent_id": request.agent_id},
        )

    async def UpdateAgent(self, request: pb.UpdateAgentRequest, context: Any) -> Any:
        """A bug: the message must never reach the caller."""
        raise RuntimeError("database password=hunter2 rejected")

    async def ListAgentEvents(self, request: pb.ListAgentEventsRequest, context: Any) -> Any:
        """Bad input via the `invalid` helper."""
        raise invalid("page_size", "must be between 1 and 1000")

    async def ListAgents(self, request: pb.ListAgentsRequest, context: Any) -> Any:
        """Sleeps page_size milliseconds, then answers."""
        self.seen.append(_seen(context))
        self.slow_started.set()
        await asyncio.sleep(request.page_size / 1000)
        self.slow_finished.set()
        return pb.ListAgentsResponse(next_page_token="done")

    async def CreateAgent(self, request: pb.CreateAgentRequest, context: Any) -> Any:
        """UNAVAILABLE on the first two attempts, then OK."""
        return self._flaky("CreateAgent", pb.CreateAgentResponse(agent=pb.Agent(id="made")))

    async def SetAgentStatus(self, request: pb.SetAgentStatusRequest, context: Any) -> Any:
        """Same as CreateAgent, but a test does not list it as idempotent."""
        return self._flaky("SetAgentStatus", pb.SetAgentStatusResponse(agent=pb.Agent(id="set")))

    def _flaky(self, method: str, response: Any) -> Any:
        self.attempts[method] += 1
        if self.attempts[method] <= 2:
            raise Unavailable(f"{method} dependency down", reason="DEPENDENCY_DOWN")
        return response


def _event(seq: int, text: str) -> ex_pb.ExecuteStreamResponse:
    return ex_pb.ExecuteStreamResponse(sequence=seq, message_delta=ex_pb.MessageDelta(content=text))


class ExecutorProbe(ex_grpc.ExecutorServicer):
    """A server stream whose behaviour depends on `input.agent_id`."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def ExecuteStream(self, request: ex_pb.ExecuteStreamRequest, context: Any) -> Any:
        """ok: 3 events; fail: 2 then FAILED_PRECONDITION; boom: 1 then a bug; abort: 1 then
        abort; hang: 1, then waits until the client goes away."""
        self.seen.append(_seen(context))
        mode = request.input.agent_id
        yield _event(1, f"{current_request_id()}|{current_actor()}")
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "boom":
            raise ZeroDivisionError("secret stream internals")
        if mode == "abort":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota used up")
        yield _event(2, "two")
        if mode == "fail":
            raise FailedPrecondition(
                "run limit reached", reason="RUN_LIMIT", metadata={"limit": "2"}
            )
        yield _event(3, "three")

    async def Execute(self, request: ex_pb.ExecuteRequest, context: Any) -> Any:
        """Echo the request id (unary executor call)."""
        return ex_pb.ExecuteResponse(run_id=current_request_id() or "")


class WriterExecutor(ex_grpc.ExecutorServicer):
    """A server stream written with `context.write` instead of yield."""

    async def ExecuteStream(self, request: ex_pb.ExecuteStreamRequest, context: Any) -> None:
        """Write two events."""
        await context.write(_event(1, "written"))
        await context.write(_event(2, str(current_request_id())))


@dataclass
class Service:
    """A running GrpcServer with the probes, and channels to it."""

    server: GrpcServer
    registry: RegistryProbe
    executor: Any
    port: int
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self, **kwargs: Any) -> grpc.aio.Channel:
        ch = create_channel(self.target, **kwargs)
        self.channels.append(ch)
        return ch

    def raw_channel(self) -> grpc.aio.Channel:
        """A plain channel: no kit client interceptors, nothing added to calls."""
        ch = grpc.aio.insecure_channel(self.target)
        self.channels.append(ch)
        return ch

    def registry_stub(self, **kwargs: Any) -> pb_grpc.AgentRegistryStub:
        return pb_grpc.AgentRegistryStub(self.channel(**kwargs))

    def executor_stub(self, **kwargs: Any) -> ex_grpc.ExecutorStub:
        return ex_grpc.ExecutorStub(self.channel(**kwargs))


MakeService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def make_service() -> AsyncIterator[MakeService]:
    """Start GrpcServers (registry + executor probes) owned by the test; stopped after it."""
    services: list[Service] = []

    async def make(
        *, token: str | None = None, port: int = 0, writer_stream: bool = False
    ) -> Service:
        registry = RegistryProbe()
        executor: Any = WriterExecutor() if writer_stream else ExecutorProbe()
        server = GrpcServer(
            [
                ServiceBinding(
                    REGISTRY, lambda s: pb_grpc.add_AgentRegistryServicer_to_server(registry, s)
                ),
                ServiceBinding(
                    EXECUTOR, lambda s: ex_grpc.add_ExecutorServicer_to_server(executor, s)
                ),
            ],
            port=port,
            service_token_sha256=hashlib.sha256(token.encode()).digest() if token else None,
        )
        bound = await server.start()
        service = Service(server, registry, executor, bound)
        services.append(service)
        return service

    yield make
    for service in services:
        for ch in service.channels:
            await ch.close()
        await service.server.stop(0)


@pytest.fixture
async def service(make_service: MakeService) -> Service:
    """A service without a service token."""
    return await make_service()
