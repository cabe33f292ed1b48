"""Adapter: agent runs on the executor over gRPC (the `Runner` port).

A streamed run is opened by reading its first event, so a refusal (unknown agent,
inactive agent, busy executor) is raised before any byte of the HTTP stream is sent.
Closing a stream cancels the call, and the executor cancels the run. Refusals are
the kit errors the executor sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from agent_gateway.adapters.grpc_calls import answer, time_of
from agent_gateway.domain.chat import (
    Composed,
    ComposeInput,
    Delta,
    Finished,
    Progress,
    RunEvent,
    RunInput,
    RunResult,
    Started,
    ToolCall,
    ToolCalls,
    Usage,
)
from agent_gateway.domain.runs import RunQuery, RunRecord
from agent_gateway.errors import RunFailed
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt_kit.errors import NotFound
from agentrt_kit.grpc.client import create_channel
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import dict_to_struct, struct_to_dict

# The call's deadline is the run's timeout plus this: when the executor's own run timeout
# (the same 300 s by default) ends the run, it is reported as TIMEOUT with the run's ids.
DEADLINE_GRACE_SECONDS = 5.0


def run_input(run: RunInput) -> pb.RunInput:
    """The executor's RunInput."""
    message = pb.RunInput(
        agent_id=run.agent_id,
        messages=[
            pb.ChatMessage(
                role=m.role,
                content=m.content,
                name=m.name,
                tool_call_id=m.tool_call_id,
                tool_calls=[
                    pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments)
                    for c in m.tool_calls
                ],
            )
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
    for tool in run.client_tools:
        added = message.client_tools.add(
            name=tool.name, description=tool.description, strict=tool.strict
        )
        if tool.parameters is not None:
            added.parameters.CopyFrom(dict_to_struct(dict(tool.parameters)))
    if run.tool_choice is not None:
        message.tool_choice.mode = run.tool_choice.mode
        message.tool_choice.function_name = run.tool_choice.function_name
    if run.response_format is not None:
        wanted = run.response_format
        message.response_format.type = wanted.type
        message.response_format.name = wanted.name
        message.response_format.strict = wanted.strict
        if wanted.schema is not None:
            message.response_format.schema.CopyFrom(dict_to_struct(dict(wanted.schema)))
    return message


def _usage(usage: pb.Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def _calls(message: pb.ChatMessage) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c.id, c.name, c.arguments_json) for c in message.tool_calls)


def _progress(kind: str, event: Any) -> Progress:
    """A tool call or step event as plain data: every field the proto has, `false` and 0 too."""
    return Progress(kind, {f.name: getattr(event, f.name) for f in event.DESCRIPTOR.fields})


def _event(message: pb.ExecuteStreamResponse, progress: bool) -> RunEvent | None:
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
    if kind == "message_completed":
        calls = _calls(message.message_completed.message)
        return ToolCalls(calls) if calls else None
    if kind == "run_started":
        started = message.run_started
        return Started(started.run_id, started.task_id, started.context_id)
    if progress and kind in ("tool_call_started", "tool_call_finished", "step_progress"):
        return _progress(kind, getattr(message, kind))
    return None


async def _next(call: Any, progress: bool) -> RunEvent | None:
    """The call's next event of interest; None at the end of the stream."""
    try:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return None
            event = _event(message, progress)
            if event is not None:
                return event
    except grpc.aio.AioRpcError as e:
        raise error_from_rpc(e) from None


def run_record(run: pb.Run) -> RunRecord:
    """The gateway's view of a run record."""
    return RunRecord(
        run_id=run.run_id,
        agent_id=run.agent_id,
        agent_version=run.agent_version,
        status=run.status,
        task_id=run.task_id,
        context_id=run.context_id,
        owner_id=run.owner_id,
        usage=_usage(run.usage),
        tool_calls=run.tool_calls,
        executor_id=run.executor_id,
        attempts=run.attempts or 1,
        error_code=run.error_code,
        error_message=run.error_message,
        created_at=time_of(run, "created_at"),
        started_at=time_of(run, "started_at"),
        finished_at=time_of(run, "finished_at"),
    )


def _lost() -> RunFailed:
    return RunFailed("the executor ended the stream early", reason="EXECUTOR_LOST")


class ExecutorStream:
    """An open streamed run: its start, then its events until the end."""

    def __init__(self, call: Any, started: Started, progress: bool) -> None:
        self._call = call
        self._progress = progress
        self.started = started

    async def events(self) -> AsyncIterator[Delta | ToolCalls | Progress | Finished]:
        """The run's events up to its end.

        Raises:
            RunFailed: EXECUTOR_LOST, the stream broke off before the end.
        """
        while True:
            event = await _next(self._call, self._progress)
            if event is None:
                raise _lost()
            if not isinstance(event, Started):
                yield event
                if isinstance(event, Finished):
                    return

    def close(self) -> None:
        """Cancel the call (the executor cancels the run if it still runs)."""
        self._call.cancel()


class ExecutorRuns:
    """Runs agents on the executor."""

    def __init__(self, target: str, *, service_token: str | None, timeout: float) -> None:
        self._channel = create_channel(target, service_token=service_token, default_timeout=timeout)
        self._stub = pb_grpc.ExecutorStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def execute(self, run: RunInput, *, timeout: float) -> RunResult:
        """Run to the end (within `timeout` seconds).

        Raises:
            AgentrtError: the executor refused the run, or the deadline passed.
        """
        reply = await answer(
            self._stub.Execute(
                pb.ExecuteRequest(input=run_input(run)), timeout=timeout + DEADLINE_GRACE_SECONDS
            )
        )
        return RunResult(
            run_id=reply.run_id,
            content=reply.message.content,
            finish_reason=reply.finish_reason,
            usage=_usage(reply.usage),
            task_id=reply.task_id,
            context_id=reply.context_id,
            error_code=reply.error.code,
            error_message=reply.error.message,
            tool_calls=_calls(reply.message),
            agent_version=reply.agent_version,
        )

    async def stream(self, run: RunInput, *, timeout: float, progress: bool) -> ExecutorStream:
        """Open a streamed run: returns once it started.

        Raises:
            AgentrtError: the executor refused the run (nothing was streamed yet).
        """
        call = self._stub.ExecuteStream(
            pb.ExecuteStreamRequest(input=run_input(run)), timeout=timeout + DEADLINE_GRACE_SECONDS
        )
        try:
            while True:
                event = await _next(call, False)
                if event is None:
                    raise _lost()
                if isinstance(event, Started):
                    return ExecutorStream(call, event, progress)
        except BaseException:
            call.cancel()
            raise

    async def get_run(self, run_id: str) -> RunRecord:
        """One run's record.

        Raises:
            AgentrtError: NotFound (RUN_NOT_FOUND), or the executor's refusal.
        """
        reply = await answer(self._stub.GetRun(pb.GetRunRequest(run_id=run_id)))
        return run_record(reply.run)

    async def list_runs(self, query: RunQuery) -> tuple[list[RunRecord], str]:
        """A page of runs, newest first, and the next page's token."""
        reply = await answer(
            self._stub.ListRuns(
                pb.ListRunsRequest(
                    agent_id=query.agent_id,
                    task_id=query.task_id,
                    status=query.status,
                    owner_id=query.owner_id,
                    page_size=query.limit,
                    page_token=query.page_token,
                )
            )
        )
        return [run_record(r) for r in reply.runs], reply.next_page_token

    async def wait_run(self, run_id: str, timeout: float) -> RunRecord:
        """The run once ended, or as it is after `timeout` seconds."""
        reply = await answer(
            self._stub.WaitRun(
                pb.WaitRunRequest(run_id=run_id, timeout_seconds=timeout),
                timeout=timeout + DEADLINE_GRACE_SECONDS,
            )
        )
        return run_record(reply.run)

    async def cancel_run(self, run_id: str) -> bool:
        """Ask the run to stop; False when it had ended already."""
        reply = await answer(self._stub.CancelRun(pb.CancelRunRequest(run_id=run_id)))
        return bool(reply.cancelled)

    async def compose(self, request: ComposeInput, *, timeout: float) -> Composed:
        """A drafted agent (create-shaped), its validation and the model's usage.

        Raises:
            AgentrtError: the executor refused (bad field, unknown template as
                TEMPLATE_NOT_FOUND, provider down) or the deadline passed.
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
            found = error_from_rpc(e)
            if found.reason == "TEMPLATE_NOT_AVAILABLE":
                raise NotFound(found.message, reason="TEMPLATE_NOT_FOUND") from None
            raise found from None
        draft = reply.draft
        return Composed(
            draft=_draft(draft),
            valid=reply.valid,
            warnings=list(reply.warnings),
            usage=_usage(reply.usage),
        )


def _draft(draft: pb.AgentDraft) -> Mapping[str, Any]:
    return {
        "name": draft.name,
        "description": draft.description or None,
        "template_id": draft.template_id,
        "system_prompt": draft.system_prompt or None,
        "toolsets": list(draft.toolsets),
        "template_config": struct_to_dict(draft.template_config),
        "llm_config_id": draft.llm_config_id or None,
    }
