"""Adapter: the tools service over gRPC.

The tool list is cached for `list_ttl` seconds (concurrent refreshes share one
call) so admitting a run costs no round trip. Invocations carry the run's
context and idempotency key; the channel retries them on UNAVAILABLE, which the
tools service's ledger makes safe even for at-most-once tools.

An agent's code (`run_agent_code`) runs over the bidirectional `RunAgentCode`
stream: the start, then one `tool_result` per `tool_call` event, until `finished`.
No retry policy names it (a stream sent again would run the code again), its
deadline is the code's timeout plus `CODE_DEADLINE_SLACK`, and leaving the session
early cancels the call, which stops the sandbox.

`sandbox` asks `ListTools` afresh for the code sandbox's report (the catalogue
publisher does, once a publish interval), bypassing the tool list's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from agent_executor.application.ports import (
    AgentCodeEvent,
    AgentCodeStart,
    CodeFinished,
    CodeProgress,
    CodeReport,
    CodeToolCall,
    SandboxInfo,
    SandboxRuntime,
    ToolCallContext,
    ToolOutcome,
    ToolSpec,
)
from agent_executor.errors import ToolsUnavailable
from agentrt.tools.v1 import tools_pb2, tools_pb2_grpc
from agentrt_kit.grpc.client import create_channel, retry_service_config
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import dict_to_struct, struct_to_dict

TOOLS_SERVICE = "agentrt.tools.v1.ToolService"
# Beyond the code's own timeout: the sandbox's start and the tool calls' round trips.
CODE_DEADLINE_SLACK = 15.0
# How long a finished code run's call may take to end before it is cancelled.
CODE_END_GRACE = 5.0
SIDE_EFFECTS = {
    tools_pb2.SIDE_EFFECT_READ_ONLY: "read_only",
    tools_pb2.SIDE_EFFECT_IDEMPOTENT: "idempotent",
    tools_pb2.SIDE_EFFECT_AT_MOST_ONCE: "at_most_once",
}


class GrpcTools:
    """The `ToolGateway` port over the tools service."""

    def __init__(
        self,
        target: str,
        *,
        service_token: str | None = None,
        timeout: float = 5.0,
        invoke_timeout: float = 120.0,
        list_ttl: float = 30.0,
    ) -> None:
        self._channel = create_channel(
            target,
            service_token=service_token,
            default_timeout=timeout,
            service_config=retry_service_config(TOOLS_SERVICE, ["ListTools", "InvokeTool"]),
        )
        self._stub = tools_pb2_grpc.ToolServiceStub(self._channel)
        self._invoke_timeout = invoke_timeout
        self._ttl = list_ttl
        self._specs: tuple[ToolSpec, ...] | None = None
        self._fetched_at = 0.0
        self._refresh: asyncio.Task[tuple[ToolSpec, ...]] | None = None

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def list_tools(self) -> Sequence[ToolSpec]:
        """Every tool offered (cached)."""
        if self._specs is not None and time.monotonic() - self._fetched_at < self._ttl:
            return self._specs
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._fetch())
        try:
            return await asyncio.shield(self._refresh)
        except ToolsUnavailable:
            if self._specs is not None:
                return self._specs  # a stale list beats refusing every run
            raise

    async def _fetch(self) -> tuple[ToolSpec, ...]:
        try:
            reply = await self._stub.ListTools(tools_pb2.ListToolsRequest())
        except grpc.aio.AioRpcError as e:
            raise ToolsUnavailable(f"tools service: {error_from_rpc(e).message}") from None
        specs = tuple(
            ToolSpec.of(
                t.name,
                t.description,
                struct_to_dict(t.arguments_schema),
                SIDE_EFFECTS.get(t.side_effect, "read_only"),
            )
            for t in reply.tools
        )
        if specs != self._specs:
            self._specs = specs
        self._fetched_at = time.monotonic()
        return self._specs or ()

    async def sandbox(self) -> SandboxInfo:
        """The code sandbox as the tools service reports it now (asked, never cached)."""
        try:
            reply = await self._stub.ListTools(tools_pb2.ListToolsRequest())
        except grpc.aio.AioRpcError as e:
            raise ToolsUnavailable(f"tools service: {error_from_rpc(e).message}") from None
        return sandbox_info(reply.sandbox)

    async def invoke(
        self, name: str, arguments: Mapping[str, Any], context: ToolCallContext
    ) -> ToolOutcome:
        """Invoke a tool; a refusal raises the tools service's error."""
        request = tools_pb2.InvokeToolRequest(
            tool_name=name,
            arguments=dict_to_struct(dict(arguments)),
            context=tools_pb2.InvocationContext(
                agent_id=context.agent_id,
                task_id=context.task_id,
                run_id=context.run_id,
                workspace=context.workspace,
                idempotency_key=context.idempotency_key,
            ),
        )
        try:
            reply = await self._stub.InvokeTool(request, timeout=self._invoke_timeout)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None
        return ToolOutcome(
            content=reply.content,
            data=struct_to_dict(reply.data) if reply.HasField("data") else None,
            artifacts=tuple(a.location for a in reply.artifacts),
            error_code=reply.error.code if reply.HasField("error") else "",
            error_message=reply.error.message if reply.HasField("error") else "",
            replayed=reply.replayed,
        )

    @contextlib.asynccontextmanager
    async def run_agent_code(self, start: AgentCodeStart) -> AsyncIterator[GrpcCodeSession]:
        """Run an agent's code over `RunAgentCode`; leaving early cancels the call."""
        call = self._stub.RunAgentCode(timeout=start.timeout_seconds + CODE_DEADLINE_SLACK)
        session = GrpcCodeSession(call)
        try:
            await session.send(tools_pb2.RunAgentCodeRequest(start=start_message(start)))
            yield session
        finally:
            await session.end()


class GrpcCodeSession:
    """The `AgentCodeSession` port over one `RunAgentCode` call."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[AgentCodeEvent]:
        while not self.finished:
            message = await self._read()
            kind = message.WhichOneof("kind")
            if kind == "progress":
                yield CodeProgress(message.progress.text)
            elif kind == "tool_call":
                call = message.tool_call
                yield CodeToolCall(call.call_id, call.name, struct_to_dict(call.arguments))
            elif kind == "finished":
                self.finished = True
                yield finished_event(message.finished)
            # Any other kind comes from a newer tools service: nothing to do with it.

    async def answer(self, call_id: str, result: ToolOutcome) -> None:
        """Send the code the result of its tool call."""
        await self.send(
            tools_pb2.RunAgentCodeRequest(
                tool_result=tools_pb2.AgentToolResult(
                    call_id=call_id, result_json=result_json(result)
                )
            )
        )

    async def send(self, request: tools_pb2.RunAgentCodeRequest) -> None:
        """Write one request; a call that has ended says why on its next read."""
        try:
            await self._call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._read()  # raises the call's error (or that it ended early)
            raise ToolsUnavailable("tools service: the code run ended early") from None

    async def _read(self) -> Any:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise _code_error(e) from None
        if message is grpc.aio.EOF:
            raise ToolsUnavailable("tools service: the code run ended without finishing")
        return message

    async def end(self) -> None:
        """Let a finished call end (the tools service cleans up); cancel any other."""
        try:
            if self.finished and not self._call.done():
                with contextlib.suppress(Exception):
                    await self._call.done_writing()
                    await asyncio.wait_for(self._call.code(), CODE_END_GRACE)
        finally:
            self._call.cancel()  # a no-op once the call has ended


def sandbox_info(sandbox: tools_pb2.SandboxInfo) -> SandboxInfo:
    """The sandbox a ListTools reply reports, as the application sees it."""
    return SandboxInfo(
        available=sandbox.available,
        isolation=sandbox.isolation,
        reason=sandbox.reason,
        runtimes=tuple(
            SandboxRuntime(r.language, r.version, tuple(r.modules)) for r in sandbox.runtimes
        ),
    )


def start_message(start: AgentCodeStart) -> tools_pb2.AgentCodeStart:
    """The `start` request of a code run."""
    context = start.context
    return tools_pb2.AgentCodeStart(
        language=start.language,
        code=start.code,
        code_path=start.code_path,
        entry_point=start.entry_point,
        messages_json=json.dumps(list(start.messages), ensure_ascii=False),
        agent_json=json.dumps(dict(start.agent), ensure_ascii=False),
        timeout_seconds=start.timeout_seconds,
        memory_mb=start.memory_mb,
        context=tools_pb2.InvocationContext(
            agent_id=context.agent_id,
            task_id=context.task_id,
            run_id=context.run_id,
            workspace=context.workspace,
        ),
    )


def result_json(result: ToolOutcome) -> str:
    """A tool result as the code reads it: `{content, data, artifacts, error}`."""
    error = {"code": result.error_code, "message": result.error_message} if not result.ok else None
    return json.dumps(
        {
            "content": result.content,
            "data": dict(result.data or {}),
            "artifacts": list(result.artifacts),
            "error": error,
        },
        ensure_ascii=False,
    )


def finished_event(finished: tools_pb2.AgentCodeFinished) -> CodeFinished:
    """The end of a code run as the application sees it."""
    report = finished.report
    return CodeFinished(
        reply=finished.reply,
        report=CodeReport(
            exit_code=report.exit_code,
            timed_out=report.timed_out,
            killed_reason=report.killed_reason,
            duration_ms=report.duration_ms,
            cpu_ms=report.cpu_ms,
            max_rss_kb=report.max_rss_kb,
        ),
        error_code=finished.error.code if finished.HasField("error") else "",
        error_message=finished.error.message if finished.HasField("error") else "",
        stderr_tail=finished.stderr_tail,
    )


def _code_error(e: grpc.aio.AioRpcError) -> Exception:
    error = error_from_rpc(e)
    if e.code() is grpc.StatusCode.UNAVAILABLE:
        return ToolsUnavailable(f"tools service: {error.message}")
    return error
