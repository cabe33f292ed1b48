"""The tools client's `run_agent_code` against a real gRPC server (a fake `RunAgentCode`).

The fake servicer runs behind the kit's `GrpcServer` (its interceptor maps raised
errors to statuses with details, and checks the service token), on port 0 over a
real channel, and plays one scripted behaviour per test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from agent_executor.adapters.tools_client import CODE_DEADLINE_SLACK, GrpcTools
from agent_executor.application.ports import (
    AgentCodeStart,
    CodeFinished,
    CodeProgress,
    CodeReport,
    CodeToolCall,
    ToolCallContext,
    ToolOutcome,
)
from agent_executor.errors import ToolsUnavailable
from agentrt.tools.v1 import tools_pb2, tools_pb2_grpc
from agentrt_kit.errors import FailedPrecondition
from agentrt_kit.grpc.server import GrpcServer, ServiceBinding
from agentrt_kit.grpc.structs import dict_to_struct
from agentrt_testkit.ports import free_port

TOKEN = "tools-token"
Behaviour = Callable[["FakeToolService", Any], Awaitable[None]]


class FakeToolService(tools_pb2_grpc.ToolServiceServicer):
    """`RunAgentCode` playing `behaviour`; records what each call saw."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls = 0
        self.starts: list[tools_pb2.AgentCodeStart] = []
        self.results: list[tools_pb2.AgentToolResult] = []
        self.metadata: list[dict[str, str]] = []
        self.time_remaining: list[float | None] = []
        self.ended = asyncio.Event()
        self.cancelled = False

    async def RunAgentCode(self, request_iterator: Any, context: Any) -> None:
        self.calls += 1
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        self.time_remaining.append(context.time_remaining())
        try:
            await self.behaviour(self, context)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.ended.set()

    async def start(self, context: Any) -> tools_pb2.AgentCodeStart:
        request = await context.read()
        self.starts.append(request.start)
        return request.start

    async def result(self, context: Any) -> dict[str, Any]:
        request = await context.read()
        self.results.append(request.tool_result)
        parsed: dict[str, Any] = json.loads(request.tool_result.result_json)
        return parsed


def event(**kind: Any) -> tools_pb2.RunAgentCodeEvent:
    return tools_pb2.RunAgentCodeEvent(**kind)


@asynccontextmanager
async def tools_service(behaviour: Behaviour) -> AsyncIterator[tuple[FakeToolService, int]]:
    servicer = FakeToolService(behaviour)
    server = GrpcServer(
        [
            ServiceBinding(
                "agentrt.tools.v1.ToolService",
                lambda s: tools_pb2_grpc.add_ToolServiceServicer_to_server(servicer, s),
            )
        ],
        service_token_sha256=hashlib.sha256(TOKEN.encode()).digest(),
    )
    port = await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(0)


@asynccontextmanager
async def client(port: int) -> AsyncIterator[GrpcTools]:
    gateway = GrpcTools(f"127.0.0.1:{port}", service_token=TOKEN, timeout=2.0)
    try:
        yield gateway
    finally:
        await gateway.close()


def start(**overrides: Any) -> AgentCodeStart:
    values: dict[str, Any] = {
        "language": "python",
        "entry_point": "main",
        "messages": [{"role": "user", "content": "héllo"}],
        "agent": {"id": "agent-1", "name": "Bot", "version": 3, "config": {"a": 1}},
        "context": ToolCallContext("agent-1", "task-1", "run-1", "ws-1", ""),
        "code": "def main(messages, agent):\n    return 'hi'\n",
        "timeout_seconds": 7,
        "memory_mb": 128,
    }
    return AgentCodeStart(**{**values, **overrides})


async def play(
    gateway: GrpcTools, code: AgentCodeStart, seen: list[Any] | None = None
) -> list[Any]:
    """Every event of a code run that makes no tool calls."""
    events = seen if seen is not None else []
    async with gateway.run_agent_code(code) as session:
        async for item in session:
            events.append(item)
    return events


async def test_a_code_run_streams_progress_and_tool_calls_and_ends_with_its_reply() -> None:
    async def behaviour(service: FakeToolService, context: Any) -> None:
        await service.start(context)
        await context.write(event(progress=tools_pb2.AgentCodeProgress(text="step 1")))
        arguments = dict_to_struct({"q": "nats", "n": 2, "deep": {"x": [1, "y"]}})
        await context.write(
            event(
                tool_call=tools_pb2.AgentCodeToolCall(
                    call_id="1", name="search", arguments=arguments
                )
            )
        )
        found = await service.result(context)
        await context.write(event(tool_call=tools_pb2.AgentCodeToolCall(call_id="2", name="read")))
        await service.result(context)
        await context.write(
            event(
                finished=tools_pb2.AgentCodeFinished(
                    reply=f"got {found['content']}",
                    report=tools_pb2.ExecutionReport(
                        exit_code=0, duration_ms=42, cpu_ms=30, max_rss_kb=9000
                    ),
                    stderr_tail="warn",
                )
            )
        )

    async with tools_service(behaviour) as (service, port), client(port) as gateway:
        seen: list[Any] = []
        async with gateway.run_agent_code(start()) as session:
            async for item in session:
                seen.append(item)
                if isinstance(item, CodeToolCall) and item.call_id == "1":
                    await session.answer(
                        "1",
                        ToolOutcome(content="3 hits", data={"hits": 3}, artifacts=("r.json",)),
                    )
                elif isinstance(item, CodeToolCall):
                    await session.answer(
                        "2", ToolOutcome(error_code="NOT_FOUND", error_message="no a.txt")
                    )
        await asyncio.wait_for(service.ended.wait(), 5)

    assert seen == [
        CodeProgress("step 1"),
        CodeToolCall("1", "search", {"q": "nats", "n": 2, "deep": {"x": [1, "y"]}}),
        CodeToolCall("2", "read", {}),
        CodeFinished(
            reply="got 3 hits",
            report=CodeReport(exit_code=0, duration_ms=42, cpu_ms=30, max_rss_kb=9000),
            stderr_tail="warn",
        ),
    ]
    (sent,) = service.starts
    assert (sent.language, sent.entry_point, sent.code, sent.code_path) == (
        "python",
        "main",
        "def main(messages, agent):\n    return 'hi'\n",
        "",
    )
    assert json.loads(sent.messages_json) == [{"role": "user", "content": "héllo"}]
    assert json.loads(sent.agent_json) == {
        "id": "agent-1",
        "name": "Bot",
        "version": 3,
        "config": {"a": 1},
    }
    assert (sent.timeout_seconds, sent.memory_mb) == (7, 128)
    assert (sent.context.agent_id, sent.context.task_id, sent.context.run_id) == (
        "agent-1",
        "task-1",
        "run-1",
    )
    assert (sent.context.workspace, sent.context.idempotency_key) == ("ws-1", "")
    assert [json.loads(r.result_json) for r in service.results] == [
        {"content": "3 hits", "data": {"hits": 3}, "artifacts": ["r.json"], "error": None},
        {
            "content": "",
            "data": {},
            "artifacts": [],
            "error": {"code": "NOT_FOUND", "message": "no a.txt"},
        },
    ]
    assert [r.call_id for r in service.results] == ["1", "2"]
    # The call carries the service token and request id, and a deadline past the code's own.
    assert service.metadata[0]["authorization"] == f"Bearer {TOKEN}"
    assert service.metadata[0]["x-request-id"]
    remaining = service.time_remaining[0]
    assert remaining is not None
    # (the servicer may see a few milliseconds more than the client set)
    assert 7 < remaining <= 7 + CODE_DEADLINE_SLACK + 0.5
    assert not service.cancelled  # a finished run's call ends on its own


async def test_a_failed_code_run_reports_its_error_and_report() -> None:
    async def behaviour(service: FakeToolService, context: Any) -> None:
        await service.start(context)
        await context.write(
            event(
                finished=tools_pb2.AgentCodeFinished(
                    report=tools_pb2.ExecutionReport(
                        exit_code=-9, timed_out=False, killed_reason="MEMORY", max_rss_kb=131072
                    ),
                    error=tools_pb2.ToolError(code="LIMIT_EXCEEDED", message="over 128 MiB"),
                    stderr_tail="MemoryError",
                )
            )
        )

    async with tools_service(behaviour) as (_, port), client(port) as gateway:
        events = await play(gateway, start(code="", code_path="bot.py"))

    assert events == [
        CodeFinished(
            report=CodeReport(exit_code=-9, killed_reason="MEMORY", max_rss_kb=131072),
            error_code="LIMIT_EXCEEDED",
            error_message="over 128 MiB",
            stderr_tail="MemoryError",
        )
    ]


async def test_a_tools_service_without_a_sandbox_refuses_with_its_reason() -> None:
    async def behaviour(service: FakeToolService, context: Any) -> None:
        raise FailedPrecondition(
            "no sandbox: bubblewrap is not installed", reason="SANDBOX_UNAVAILABLE"
        )

    async with tools_service(behaviour) as (service, port), client(port) as gateway:
        with pytest.raises(FailedPrecondition) as refused:
            await play(gateway, start())

    assert refused.value.reason == "SANDBOX_UNAVAILABLE"
    assert "bubblewrap" in refused.value.message
    assert service.calls == 1


async def test_an_unavailable_tools_service_is_not_asked_twice() -> None:
    async def behaviour(service: FakeToolService, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    async with tools_service(behaviour) as (service, port), client(port) as gateway:
        with pytest.raises(ToolsUnavailable):
            await play(gateway, start())

    # InvokeTool and ListTools are retried on UNAVAILABLE; a stream sent again would run
    # the code again, so RunAgentCode never is.
    assert service.calls == 1


async def test_a_stream_that_ends_without_finishing_is_unavailable() -> None:
    async def behaviour(service: FakeToolService, context: Any) -> None:
        await service.start(context)
        await context.write(event(progress=tools_pb2.AgentCodeProgress(text="bye")))

    async with tools_service(behaviour) as (_, port), client(port) as gateway:
        seen: list[Any] = []
        with pytest.raises(ToolsUnavailable, match="without finishing"):
            await play(gateway, start(), seen)

    assert seen == [CodeProgress("bye")]


async def test_leaving_a_running_code_run_cancels_its_call() -> None:
    async def behaviour(service: FakeToolService, context: Any) -> None:
        await service.start(context)
        await context.write(event(progress=tools_pb2.AgentCodeProgress(text="working")))
        await asyncio.sleep(30)  # the code runs on

    async with tools_service(behaviour) as (service, port), client(port) as gateway:
        task = asyncio.create_task(play(gateway, start()))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(service.ended.wait(), 5)

    assert service.cancelled


async def test_an_unreachable_tools_service_fails_fast_as_unavailable() -> None:
    async with client(free_port()) as gateway:
        started = time.monotonic()
        with pytest.raises(ToolsUnavailable):
            await play(gateway, start())
        assert time.monotonic() - started < 3
