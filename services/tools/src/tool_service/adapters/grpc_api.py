"""Adapter: the `agentrt.tools.v1.ToolService` gRPC servicer.

Translation only: proto → plain values → one application call → proto.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import grpc

from agentrt.tools.v1 import tools_pb2, tools_pb2_grpc
from agentrt_kit.errors import invalid
from agentrt_kit.grpc.structs import dict_to_struct, struct_to_dict
from tool_service.application.code import AgentCode, AgentCodeRequest
from tool_service.application.runner import ToolRunner
from tool_service.domain.sandbox import AgentEvent, Finished, Progress, SandboxStatus
from tool_service.domain.tools import InvocationContext, SideEffect, ToolResult, ToolSpec
from tool_service.errors import SandboxUnavailable

SIDE_EFFECTS = {
    SideEffect.READ_ONLY: tools_pb2.SIDE_EFFECT_READ_ONLY,
    SideEffect.IDEMPOTENT: tools_pb2.SIDE_EFFECT_IDEMPOTENT,
    SideEffect.AT_MOST_ONCE: tools_pb2.SIDE_EFFECT_AT_MOST_ONCE,
}


def descriptor(spec: ToolSpec) -> tools_pb2.ToolDescriptor:
    """The proto of a tool spec."""
    return tools_pb2.ToolDescriptor(
        name=spec.name,
        description=spec.description,
        arguments_schema=dict_to_struct(dict(spec.arguments_schema)),
        side_effect=SIDE_EFFECTS[spec.side_effect],
        version=spec.version,
        source=spec.source,
    )


def context_of(message: tools_pb2.InvocationContext) -> InvocationContext:
    """The domain context of a proto context."""
    return InvocationContext(
        agent_id=message.agent_id,
        task_id=message.task_id,
        run_id=message.run_id,
        workspace=message.workspace,
        idempotency_key=message.idempotency_key,
    )


def response_of(result: ToolResult, replayed: bool) -> tools_pb2.InvokeToolResponse:
    """The proto of a tool result."""
    return tools_pb2.InvokeToolResponse(
        content=result.content,
        data=dict_to_struct(dict(result.data)),
        artifacts=[
            tools_pb2.Artifact(
                kind=a.kind, location=a.location, media_type=a.media_type, size_bytes=a.size_bytes
            )
            for a in result.artifacts
        ],
        error=tools_pb2.ToolError(code=result.error_code, message=result.error_message)
        if result.failed
        else None,
        replayed=replayed,
    )


def sandbox_info(status: SandboxStatus) -> tools_pb2.SandboxInfo:
    """The proto of the sandbox's status."""
    return tools_pb2.SandboxInfo(
        available=status.available,
        isolation=status.isolation,
        reason=status.reason,
        runtimes=[
            tools_pb2.SandboxRuntime(
                language=r.language.value, version=r.version, modules=list(r.modules)
            )
            for r in status.runtimes
        ],
        enforcement=list(status.enforcement),
    )


def _json(text: str, field: str, default: object) -> object:
    if not text:
        return default
    if len(text) > 4 * 1024 * 1024:
        raise invalid(field, "is over 4 MiB")
    try:
        return json.loads(text)
    except ValueError as e:
        raise invalid(field, f"is not JSON: {e}") from None


def start_of(message: tools_pb2.AgentCodeStart) -> AgentCodeRequest:
    """The application request of a RunAgentCode `start`."""
    messages = _json(message.messages_json, "start.messages_json", [])
    if not isinstance(messages, list):
        raise invalid("start.messages_json", "must be a JSON array")
    agent = _json(message.agent_json, "start.agent_json", {})
    if not isinstance(agent, dict):
        raise invalid("start.agent_json", "must be a JSON object")
    return AgentCodeRequest(
        language=message.language,
        code=message.code,
        code_path=message.code_path,
        entry_point=message.entry_point or "main",
        messages=messages,
        agent=agent,
        timeout_seconds=message.timeout_seconds or 30,
        memory_mb=message.memory_mb or 256,
        context=context_of(message.context),
    )


def event_of(event: AgentEvent) -> tools_pb2.RunAgentCodeEvent:
    """The proto of an agent-code event."""
    if isinstance(event, Progress):
        return tools_pb2.RunAgentCodeEvent(progress=tools_pb2.AgentCodeProgress(text=event.text))
    if isinstance(event, Finished):
        e = event.execution
        return tools_pb2.RunAgentCodeEvent(
            finished=tools_pb2.AgentCodeFinished(
                reply=event.reply,
                report=tools_pb2.ExecutionReport(
                    exit_code=e.exit_code,
                    timed_out=e.timed_out,
                    killed_reason=e.killed_reason,
                    duration_ms=e.duration_ms,
                    cpu_ms=e.cpu_ms,
                    max_rss_kb=e.max_rss_kb,
                ),
                error=tools_pb2.ToolError(code=event.error_code, message=event.error_message)
                if event.error_code
                else None,
                stderr_tail=event.stderr_tail,
            )
        )
    return tools_pb2.RunAgentCodeEvent(
        tool_call=tools_pb2.AgentCodeToolCall(
            call_id=event.call_id, name=event.name, arguments=dict_to_struct(event.arguments)
        )
    )


class ToolServiceServicer(tools_pb2_grpc.ToolServiceServicer):
    """gRPC face of the tool runner and the agent-code runner."""

    def __init__(
        self,
        runner: ToolRunner,
        agent_code: AgentCode | None = None,
        sandbox: SandboxStatus | None = None,
    ) -> None:
        self.runner = runner
        self.agent_code = agent_code
        self.sandbox = sandbox or SandboxStatus(False, reason="no sandbox configured")

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ListToolsResponse:
        """Every tool and every plugin problem."""
        catalog = self.runner.catalog
        return tools_pb2.ListToolsResponse(
            tools=[descriptor(spec) for spec in catalog.specs()],
            plugin_problems=[
                tools_pb2.PluginProblem(plugin=plugin, error=error)
                for plugin, error in catalog.problems
            ],
            sandbox=sandbox_info(self.sandbox),
        )

    async def InvokeTool(
        self, request: tools_pb2.InvokeToolRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.InvokeToolResponse:
        """Run one tool."""
        if not request.tool_name:
            raise invalid("tool_name", "is required")
        result, replayed = await self.runner.invoke(
            request.tool_name, struct_to_dict(request.arguments), context_of(request.context)
        )
        return response_of(result, replayed)

    async def RunAgentCode(
        self,
        request_iterator: AsyncIterator[tools_pb2.RunAgentCodeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[tools_pb2.RunAgentCodeEvent]:
        """Run an agent's code once: events out, tool results in."""
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("start"):
            raise invalid("start", "the first request must be start")
        if self.agent_code is None or not self.sandbox.available:
            raise SandboxUnavailable(self.sandbox.reason or "no sandbox")
        request = start_of(first.start)
        run = await self.agent_code.start(request)

        async def results() -> None:
            async for message in request_iterator:
                if message.HasField("tool_result"):
                    answer = message.tool_result
                    parsed = _json(answer.result_json, "tool_result.result_json", {})
                    await run.answer(answer.call_id, parsed if isinstance(parsed, dict) else {})

        pump = asyncio.create_task(results())
        try:
            async for event in self.agent_code.events(run, request.context):
                yield event_of(event)
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
