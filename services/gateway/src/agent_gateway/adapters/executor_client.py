"""Adapter: agent runs on the executor over gRPC (`Runner`, `RunRecords`, `QueueSource`).

A streamed run is opened by reading its first event, so a refusal (unknown agent,
inactive agent, busy executor) is raised before any byte of the HTTP stream is sent.
Foreground runs (Execute, ExecuteStream) are started detached
(`detach_on_disconnect`): closing their call only stops listening, and the run goes
on (a stopping gateway leaves them to their clients); `cancel_run` stops one. A
replayed or followed run's stream only stops listening too (StreamRunEvents reads the
run's stored events). Refusals are the kit errors the executor sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from agent_gateway.adapters.grpc_calls import answer, time_of
from agent_gateway.domain.chat import (
    FINISHED_WELL,
    Composed,
    ComposeInput,
    Delta,
    Finished,
    Message,
    Progress,
    RunEvent,
    RunInput,
    RunResult,
    Started,
    ToolCall,
    ToolCalls,
    Usage,
)
from agent_gateway.domain.queues import QueueFigures, Queues
from agent_gateway.domain.runs import OPEN, RunQuery, RunRecord, RunStart, StoredEvent
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
# A follower of a run's events (which may wait in the queue first) is cut off after this;
# it resumes where it was with Last-Event-ID.
FOLLOW_DEADLINE_SECONDS = 3600.0
# A run's last events are stored a moment after its record says it ended: a stream of
# them that ends early is read again after these pauses (seconds), then taken as whole.
TAIL_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
TERMINAL = frozenset({"run_completed", "run_failed"})


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
        run_id=run.run_id,
        min_agent_version=run.min_agent_version,
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


def _message(message: pb.ChatMessage) -> Message:
    return Message(message.role or "assistant", message.content, tool_calls=_calls(message))


def _fields(event: Any) -> dict[str, Any]:
    """An event of scalar fields as plain data: every field the proto has, `false` and 0 too."""
    return {f.name: getattr(event, f.name) for f in event.DESCRIPTOR.fields}


def _progress(kind: str, event: Any) -> Progress:
    """A tool call or step event as plain data."""
    return Progress(kind, _fields(event))


def stored_event(message: pb.ExecuteStreamResponse) -> StoredEvent | None:
    """A run's event as the gateway serves it (None for an event it does not know)."""
    kind = message.WhichOneof("event")
    if kind is None:
        return None
    event = getattr(message, kind)
    data: dict[str, Any]
    if kind == "message_completed":
        data = {"message_id": event.message_id, "message": _message(event.message)}
    elif kind == "run_completed":
        data = {"finish_reason": event.finish_reason or "stop", "usage": _usage(event.usage)}
    else:  # the others have scalar fields only
        data = _fields(event)
    return StoredEvent(message.sequence, kind, data, time_of(message, "occurred_at"))


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
        attempts=run.attempts,  # 0 while a queued run waits for its first start
        error_code=run.error_code,
        error_message=run.error_message,
        created_at=time_of(run, "created_at"),
        started_at=time_of(run, "started_at"),
        finished_at=time_of(run, "finished_at"),
        queued=run.queued,
        metadata=struct_to_dict(run.metadata),
        multitask_strategy=run.multitask_strategy,
        output=_message(run.output) if run.HasField("output") else None,
        finish_reason=run.finish_reason,
        rolled_back=run.rolled_back,
    )


def _lost() -> RunFailed:
    return RunFailed("the executor ended the stream early", reason="EXECUTOR_LOST")


class StoredEventsCall:
    """StreamRunEvents read as one call, up to the run's last event.

    The executor ends the stream of a run that has ended at the last event it has
    stored, which may not be the run's last yet (those are stored a moment after the
    run's record ends). Such a stream, cut short after at least one event, is opened
    again after the last event read, `TAIL_WAITS` times at most. Reads as a gRPC call
    does: `read()` gives messages, then EOF; `cancel()` stops it.
    """

    def __init__(
        self,
        stub: pb_grpc.ExecutorStub,
        run_id: str,
        after: int,
        *,
        timeout: float,
        ended: Callable[[], Awaitable[bool]],
    ) -> None:
        self._stub = stub
        self._run_id = run_id
        self._after = after
        self._timeout = timeout
        self._ended = ended
        self._call: Any = None
        self._waits = iter(TAIL_WAITS)
        self._seen = self._done = False

    async def read(self) -> Any:
        """The next event, or EOF after the run's last one (or an end not to retry).

        Raises:
            grpc.aio.AioRpcError: the executor refused or went away.
        """
        while not self._done:
            if self._call is None:
                self._call = self._stub.StreamRunEvents(
                    pb.StreamRunEventsRequest(run_id=self._run_id, after_sequence=self._after),
                    timeout=self._timeout,
                )
            message = await self._call.read()
            if message is not grpc.aio.EOF:
                self._after, self._seen = message.sequence, True
                self._done = message.WhichOneof("event") in TERMINAL
                return message
            self._call = None
            # Nothing at all (resumed after the end), or the run still runs: the reader
            # decides. An ended run's stream cut short: its tail may be on its way.
            delay = next(self._waits, None) if self._seen and await self._ended() else None
            if delay is None:
                break
            await asyncio.sleep(delay)
        return grpc.aio.EOF

    def cancel(self) -> None:
        """Stop reading."""
        self._done = True
        if self._call is not None:
            self._call.cancel()


class ExecutorStream:
    """An open streamed run: its start, then its events until the end."""

    def __init__(self, call: Any, started: Started, progress: bool) -> None:
        self._call = call
        self._progress = progress
        self.started = started
        self.sequence = 0  # of the last event read (the run's stored events are numbered so)

    async def _read(self) -> Any:
        """The call's next message (EOF at the end), its sequence number noted."""
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None
        if message is not grpc.aio.EOF:
            self.sequence = message.sequence
        return message

    async def events(self) -> AsyncIterator[Delta | ToolCalls | Progress | Finished]:
        """The run's events up to its end.

        Raises:
            RunFailed: EXECUTOR_LOST, the stream broke off before the end.
        """
        while True:
            message = await self._read()
            if message is grpc.aio.EOF:
                raise _lost()
            event = _event(message, self._progress)
            if event is None or isinstance(event, Started):
                continue
            yield event
            if isinstance(event, Finished):
                return

    def close(self) -> None:
        """Cancel the call; the run goes on if it still runs (it was started detached)."""
        self._call.cancel()


class ReplayedStream(ExecutorStream):
    """A run's stream read back from its stored events (closing it only stops reading).

    A run that was not streamed stored its messages but no text deltas: the text of its
    last message is sent as one delta before its end, so the replay says what the run
    answered.
    """

    async def events(self) -> AsyncIterator[Delta | ToolCalls | Progress | Finished]:
        """The run's events up to its end.

        Raises:
            RunFailed: EXECUTOR_LOST, the stream broke off before the end.
        """
        streamed, last = False, ""
        while True:
            message = await self._read()
            if message is grpc.aio.EOF:
                raise _lost()
            kind = message.WhichOneof("event")
            if kind == "message_delta":
                streamed = True
            elif kind == "message_completed":
                last = message.message_completed.message.content
            event = _event(message, self._progress)
            if event is None or isinstance(event, Started):
                continue
            if isinstance(event, Finished):
                if not streamed and last and event.finish_reason in FINISHED_WELL:
                    yield Delta(last)
                yield event
                return
            yield event


async def _opened(
    call: Any, progress: bool, kind: type[ExecutorStream] = ExecutorStream
) -> ExecutorStream:
    """The stream of `call` once the run's start is read (the call is cancelled on failure)."""
    try:
        while True:
            event = await _next(call, False)
            if event is None:
                raise _lost()
            if isinstance(event, Started):
                return kind(call, event, progress)
    except BaseException:
        call.cancel()
        raise


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
                pb.ExecuteRequest(input=run_input(run), detach_on_disconnect=True),
                timeout=timeout + DEADLINE_GRACE_SECONDS,
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
            pb.ExecuteStreamRequest(input=run_input(run), detach_on_disconnect=True),
            timeout=timeout + DEADLINE_GRACE_SECONDS,
        )
        return await _opened(call, progress)

    async def replay(self, run_id: str, *, timeout: float, progress: bool) -> ExecutorStream:
        """An existing run's stream from its first event (returns once its start is read).

        Raises:
            AgentrtError: the executor refused (e.g. RUN_NOT_FOUND).
        """
        call = self._stored(run_id, 0, timeout + DEADLINE_GRACE_SECONDS)
        return await _opened(call, progress, ReplayedStream)

    async def start(self, start: RunStart) -> tuple[RunRecord, bool]:
        """Queue a run; its record, and whether it is new (False: an idempotent retry).

        Raises:
            AgentrtError: the executor refused (AlreadyExists RUN_EXISTS: the run id names
                a run of another request).
        """
        request = pb.StartRunRequest(
            input=run_input(start.input),
            webhook_url=start.webhook_url,
            multitask_strategy=start.multitask_strategy,
        )
        if start.metadata:
            request.metadata.CopyFrom(dict_to_struct(dict(start.metadata)))
        reply = await answer(self._stub.StartRun(request))
        return run_record(reply.run), reply.created

    async def run_events(self, run_id: str, after: int) -> AsyncIterator[StoredEvent]:
        """The run's stored events after sequence `after`, live until its last one.

        A stream resumed after the last event of an ended run has no events.

        Raises:
            AgentrtError: the stream broke off (EXECUTOR_LOST when it ended while the run
                had not).
        """
        call = self._stored(run_id, after, FOLLOW_DEADLINE_SECONDS)
        try:
            while True:
                try:
                    message = await call.read()
                except grpc.aio.AioRpcError as e:
                    raise error_from_rpc(e) from None
                if message is grpc.aio.EOF:
                    if (await self.get_run(run_id)).status in OPEN:
                        raise _lost()
                    return
                event = stored_event(message)
                if event is not None:
                    yield event
                    if event.terminal:
                        return
        finally:
            call.cancel()

    def _stored(self, run_id: str, after: int, timeout: float) -> StoredEventsCall:
        async def ended() -> bool:
            return (await self.get_run(run_id)).status not in OPEN

        return StoredEventsCall(self._stub, run_id, after, timeout=timeout, ended=ended)

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

    async def cancel_run(self, run_id: str, *, rollback: bool = False) -> bool:
        """Ask the run to stop (and, with `rollback`, undo it); False when it had ended."""
        action = "rollback" if rollback else "interrupt"
        reply = await answer(
            self._stub.CancelRun(pb.CancelRunRequest(run_id=run_id, action=action))
        )
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

    async def queues(self, *, timeout: float) -> Queues:
        """Every queue's figures (any replica answers for all of them).

        A queue whose broker is down comes back unavailable, not as an error.

        Raises:
            AgentrtError: the executor refused or did not answer within `timeout` seconds.
        """
        reply = await answer(self._stub.ListQueues(pb.ListQueuesRequest(), timeout=timeout))
        return Queues(
            bus_backend=reply.bus_backend,
            free_slots=reply.free_slots,
            queues=tuple(queue_figures(queue) for queue in reply.queues),
        )


def queue_figures(queue: pb.QueueFigures) -> QueueFigures:
    """A queue's figures as the domain holds them.

    A figure the broker did not tell (an unset field) is None, and so is every figure of
    a queue whose broker could not be asked (its zeros say nothing).
    """
    if not queue.available:
        return QueueFigures(queue.name, queue.backend, available=False, error=queue.error)
    return QueueFigures(
        name=queue.name,
        backend=queue.backend,
        available=True,
        depth=queue.depth if queue.HasField("depth") else None,
        pending=queue.pending,
        oldest_age_seconds=(
            queue.oldest_age_seconds if queue.HasField("oldest_age_seconds") else None
        ),
        redelivered=queue.redelivered if queue.HasField("redelivered") else None,
        dead_letters=queue.dead_letters,
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
