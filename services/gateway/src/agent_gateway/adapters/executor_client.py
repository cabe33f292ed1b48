"""Adapter: agent runs on the executor over gRPC.

A streamed run is opened by reading its first event, so a refusal (unknown agent,
inactive agent, busy executor) is an HTTP error before any byte of the stream is
sent. Closing a stream cancels the call, and the executor cancels the run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent_gateway.domain.chat import (
    ComposeInput,
    Delta,
    Finished,
    RunEvent,
    RunInput,
    RunResult,
    Started,
    Usage,
)
from agent_gateway.domain.errors import ApiError, from_service
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt_kit.grpc.client import create_channel
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import struct_to_dict


def run_input(run: RunInput) -> pb.RunInput:
    """The executor's RunInput."""
    message = pb.RunInput(
        agent_id=run.agent_id,
        messages=[
            pb.ChatMessage(role=m.role, content=m.content, name=m.name, tool_call_id=m.tool_call_id)
            for m in run.messages
        ],
        task_id=run.task_id,
        context_id=run.context_id,
        user_id=run.user_id,
    )
    sampling = message.sampling
    for key, value in run.sampling.items():
        if key == "stop":
            sampling.stop.extend(value)
        else:
            setattr(sampling, key, value)
    return message


def _usage(usage: pb.Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def _event(message: pb.ExecuteStreamResponse) -> RunEvent | None:
    kind = message.WhichOneof("event")
    if kind == "message_delta":
        return Delta(message.message_delta.content)
    if kind == "run_completed":
        done = message.run_completed
        return Finished(done.finish_reason or "stop", _usage(done.usage))
    if kind == "run_failed":
        failed = message.run_failed
        reason = "cancelled" if failed.code == "CANCELLED" else "error"
        return Finished(reason, Usage(), failed.code, failed.message)
    if kind == "run_started":
        started = message.run_started
        return Started(started.run_id, started.task_id, started.context_id)
    return None  # tool calls and step progress are not part of a chat completion


def refusal(error: grpc.aio.AioRpcError) -> ApiError:
    """An executor refusal as the HTTP API reports it."""
    found = error_from_rpc(error)
    not_found = "AGENT_NOT_FOUND" if found.reason in ("AGENT_NOT_FOUND", "") else "NOT_FOUND"
    return from_service(found, not_found=not_found)


async def _next(call: Any) -> RunEvent | None:
    """The call's next event of interest; None at the end of the stream."""
    try:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return None
            event = _event(message)
            if event is not None:
                return event
    except grpc.aio.AioRpcError as e:
        raise refusal(e) from None


class RunStream:
    """An open streamed run: its start, then its events until the end."""

    def __init__(self, call: Any, started: Started) -> None:
        self._call = call
        self.started = started

    async def events(self) -> AsyncIterator[Delta | Finished]:
        """The run's text deltas and its end.

        Raises:
            ApiError: the stream broke off (the executor went away) before the end.
        """
        while True:
            event = await _next(self._call)
            if event is None:
                raise ApiError(502, "EXECUTION_ERROR", "the executor ended the stream early")
            if isinstance(event, Delta | Finished):
                yield event
                if isinstance(event, Finished):
                    return

    def close(self) -> None:
        """Cancel the call (the executor cancels the run if it still runs)."""
        self._call.cancel()


class ExecutorRuns:
    """Runs agents; refusals come back as the HTTP API's errors."""

    def __init__(self, target: str, *, service_token: str | None, timeout: float) -> None:
        self._channel = create_channel(target, service_token=service_token, default_timeout=timeout)
        self._stub = pb_grpc.ExecutorStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def execute(self, run: RunInput, *, timeout: float) -> RunResult:
        """Run to the end (within `timeout` seconds).

        Raises:
            ApiError: the executor refused the run, or the deadline passed (408).
        """
        try:
            reply = await self._stub.Execute(
                pb.ExecuteRequest(input=run_input(run)), timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            raise refusal(e) from None
        return RunResult(
            run_id=reply.run_id,
            content=reply.message.content,
            finish_reason=reply.finish_reason,
            usage=_usage(reply.usage),
            task_id=reply.task_id,
            context_id=reply.context_id,
            error_code=reply.error.code,
            error_message=reply.error.message,
        )

    async def stream(self, run: RunInput, *, timeout: float) -> RunStream:
        """Open a streamed run: returns once it started.

        Raises:
            ApiError: the executor refused the run (nothing was streamed yet).
        """
        call = self._stub.ExecuteStream(
            pb.ExecuteStreamRequest(input=run_input(run)), timeout=timeout
        )
        try:
            while True:
                event = await _next(call)
                if event is None:
                    raise ApiError(502, "EXECUTION_ERROR", "the executor ended the stream early")
                if isinstance(event, Started):
                    return RunStream(call, event)
        except BaseException:
            call.cancel()
            raise

    async def compose(self, request: ComposeInput, *, timeout: float) -> dict[str, Any]:
        """A drafted agent (create-shaped), its validation and the model's usage.

        Raises:
            ApiError: the executor refused (bad field 400, unknown template 409, provider
                down 503) or the deadline passed (408).
        """
        try:
            reply = await self._stub.Compose(
                pb.ComposeRequest(
                    template_id=request.template_id,
                    instructions=request.instructions,
                    suggested_name=request.suggested_name,
                    suggested_tools=list(request.suggested_tools),
                    llm_config_id=request.llm_config_id,
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as e:
            found = refusal(e)
            if found.details.get("reason") == "TEMPLATE_NOT_AVAILABLE":
                found.status, found.code = 404, "TEMPLATE_NOT_FOUND"
            raise found from None
        draft = reply.draft
        return {
            "success": True,
            "draft": {
                "name": draft.name,
                "description": draft.description or None,
                "template_id": draft.template_id,
                "system_prompt": draft.system_prompt or None,
                "toolsets": list(draft.toolsets),
                "template_config": struct_to_dict(draft.template_config),
                "llm_config_id": draft.llm_config_id or None,
            },
            "validation_results": {"valid": reply.valid, "warnings": list(reply.warnings)},
            "usage": _usage(reply.usage).body(),
        }
