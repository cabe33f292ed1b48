"""Adapter: executor values to and from their protobuf messages (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from agent_executor.application.compose import ComposeResult
from agent_executor.application.context import Sampling
from agent_executor.application.ports import QueueReport
from agent_executor.application.runs import InputMessage, RunRequest
from agent_executor.application.templates import LoadedTemplate, TemplateProblem
from agent_executor.domain.client_tools import ClientTool, ResponseFormat, ToolCall, ToolChoice
from agent_executor.domain.compose import ComposeRequest
from agent_executor.domain.runs import (
    EventBody,
    MessageCompleted,
    MessageDelta,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunRecord,
    RunStarted,
    StepProgress,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
)
from agentrt.events.v1 import run_events_pb2
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt_kit.grpc.structs import dict_to_struct, struct_to_dict


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp, or None."""
    if value is None:
        return None
    # Timestamp.FromDatetime is pure Python and several times slower; events take this path.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # naive means UTC, as FromDatetime reads it
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def usage_pb(usage: Usage) -> pb.Usage:
    """The Usage message."""
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def run_request(message: pb.RunInput, *, stream: bool) -> RunRequest:
    """The run request a RunInput describes."""
    s = message.sampling
    tools = message.client_tools
    fmt = message.response_format
    return RunRequest(
        agent_id=message.agent_id,
        messages=[
            InputMessage(
                m.role,
                m.content,
                m.name,
                m.tool_call_id,
                tuple(ToolCall(c.id, c.name, c.arguments_json) for c in m.tool_calls),
            )
            for m in message.messages
        ],
        sampling=Sampling(
            temperature=s.temperature if s.HasField("temperature") else None,
            max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
            top_p=s.top_p if s.HasField("top_p") else None,
            frequency_penalty=s.frequency_penalty if s.HasField("frequency_penalty") else None,
            presence_penalty=s.presence_penalty if s.HasField("presence_penalty") else None,
            stop=tuple(s.stop),
        ),
        task_id=message.task_id,
        context_id=message.context_id,
        user_id=message.user_id,
        run_id=message.run_id,
        stream=stream,
        min_agent_version=message.min_agent_version,
        client_tools=[
            ClientTool(
                t.name,
                t.description,
                struct_to_dict(t.parameters) if t.HasField("parameters") else None,
                t.strict,
            )
            for t in tools
        ],
        tool_choice=ToolChoice(
            message.tool_choice.mode or "auto", message.tool_choice.function_name
        ),
        response_format=ResponseFormat(
            fmt.type or "text",
            fmt.name,
            struct_to_dict(fmt.schema) if fmt.HasField("schema") else None,
            fmt.strict,
        ),
    )


def run_input_pb(request: RunRequest) -> pb.RunInput:
    """The RunInput that describes a run request (`run_request` reversed)."""
    s, fmt = request.sampling, request.response_format
    return pb.RunInput(
        agent_id=request.agent_id,
        messages=[
            pb.ChatMessage(
                role=m.role,
                content=m.content,
                name=m.name,
                tool_call_id=m.tool_call_id,
                tool_calls=tool_calls_pb(m.tool_calls),
            )
            for m in request.messages
        ],
        sampling=pb.SamplingParams(
            temperature=s.temperature,
            max_tokens=s.max_tokens,
            top_p=s.top_p,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            stop=list(s.stop),
        ),
        task_id=request.task_id,
        context_id=request.context_id,
        user_id=request.user_id,
        run_id=request.run_id,
        min_agent_version=request.min_agent_version,
        client_tools=[
            pb.ClientTool(
                name=t.name,
                description=t.description,
                parameters=dict_to_struct(dict(t.parameters)) if t.parameters is not None else None,
                strict=t.strict,
            )
            for t in request.client_tools
        ],
        tool_choice=pb.ToolChoice(
            mode=request.tool_choice.mode, function_name=request.tool_choice.function_name
        ),
        response_format=pb.ResponseFormat(
            type=fmt.type,
            name=fmt.name,
            schema=dict_to_struct(dict(fmt.schema)) if fmt.schema is not None else None,
            strict=fmt.strict,
        ),
    )


class ProtoRequestCodec:
    """The `RequestCodec` port: a queued run's request as its RunInput's bytes."""

    def encode(self, request: RunRequest) -> bytes:
        """The request as RunInput bytes."""
        return run_input_pb(request).SerializeToString(deterministic=True)

    def decode(self, data: bytes) -> RunRequest:
        """The request from `encode`'s bytes (a queued run is not streamed to anyone)."""
        return run_request(pb.RunInput.FromString(data), stream=False)


def tool_calls_pb(calls: Sequence[ToolCall]) -> list[pb.ToolCall]:
    """The ToolCall messages of client tool calls."""
    return [pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments_json) for c in calls]


def stream_event(event: RunEvent) -> pb.ExecuteStreamResponse:
    """The ExecuteStreamResponse of a run event."""
    out = pb.ExecuteStreamResponse(
        sequence=event.sequence, occurred_at=timestamp(event.occurred_at)
    )
    body = event.body
    if isinstance(body, RunStarted):
        out.run_started.CopyFrom(
            pb.RunStarted(
                run_id=body.run_id,
                agent_id=body.agent_id,
                agent_version=body.agent_version,
                task_id=body.task_id,
                context_id=body.context_id,
            )
        )
    elif isinstance(body, MessageDelta):
        out.message_delta.CopyFrom(
            pb.MessageDelta(content=body.content, message_id=body.message_id)
        )
    elif isinstance(body, ToolCallStarted):
        out.tool_call_started.CopyFrom(
            pb.ToolCallStarted(
                tool_call_id=body.tool_call_id,
                tool_name=body.tool_name,
                arguments_json=body.arguments_json,
            )
        )
    elif isinstance(body, ToolCallFinished):
        out.tool_call_finished.CopyFrom(
            pb.ToolCallFinished(
                tool_call_id=body.tool_call_id,
                tool_name=body.tool_name,
                ok=body.ok,
                result_preview=body.result_preview,
            )
        )
    elif isinstance(body, StepProgress):
        out.step_progress.CopyFrom(
            pb.StepProgress(
                step_id=body.step_id,
                step_name=body.step_name,
                state=body.state,
                attempt=body.attempt,
                detail=body.detail,
            )
        )
    elif isinstance(body, MessageCompleted):
        out.message_completed.CopyFrom(
            pb.MessageCompleted(
                message=pb.ChatMessage(
                    role=body.role, content=body.content, tool_calls=tool_calls_pb(body.tool_calls)
                ),
                message_id=body.message_id,
            )
        )
    elif isinstance(body, RunCompleted):
        out.run_completed.CopyFrom(
            pb.RunCompleted(finish_reason=body.finish_reason, usage=usage_pb(body.usage))
        )
    else:
        out.run_failed.CopyFrom(pb.RunFailed(code=body.code, message=body.message))
    return out


def stored_run_event(event: RunEvent, agent_id: str, agent_version: int) -> run_events_pb2.RunEvent:
    """The `agentrt.events.v1.RunEvent` a run event is stored as, whichever bus keeps it."""
    return run_events_pb2.RunEvent(
        event_id=f"{event.run_id}:{event.sequence}",
        run_id=event.run_id,
        sequence=event.sequence,
        occurred_at=timestamp(event.occurred_at),
        type=event.body.type,
        agent_id=agent_id,
        agent_version=agent_version,
        event=stream_event(event),
    )


def run_event_of(message: run_events_pb2.RunEvent) -> RunEvent:
    """The run event a stored `agentrt.events.v1.RunEvent` carries (`stream_event` reversed).

    Raises:
        ValueError: the message has no event body this executor knows (a newer one wrote it).
    """
    e = message.event
    kind = e.WhichOneof("event")
    body: EventBody
    if kind == "run_started":
        m = e.run_started
        body = RunStarted(m.run_id, m.agent_id, m.agent_version, m.task_id, m.context_id)
    elif kind == "message_delta":
        body = MessageDelta(e.message_delta.content, e.message_delta.message_id)
    elif kind == "tool_call_started":
        s = e.tool_call_started
        body = ToolCallStarted(s.tool_call_id, s.tool_name, s.arguments_json)
    elif kind == "tool_call_finished":
        f = e.tool_call_finished
        body = ToolCallFinished(f.tool_call_id, f.tool_name, f.ok, f.result_preview)
    elif kind == "step_progress":
        p = e.step_progress
        body = StepProgress(p.step_id, p.step_name, p.state, p.attempt, p.detail)
    elif kind == "message_completed":
        c = e.message_completed
        body = MessageCompleted(
            c.message.content,
            c.message_id,
            c.message.role,
            tuple(ToolCall(t.id, t.name, t.arguments_json) for t in c.message.tool_calls),
        )
    elif kind == "run_completed":
        u = e.run_completed.usage
        body = RunCompleted(
            e.run_completed.finish_reason, Usage(u.prompt_tokens, u.completion_tokens)
        )
    elif kind == "run_failed":
        body = RunFailed(e.run_failed.code, e.run_failed.message)
    else:
        raise ValueError(f"run event {message.event_id!r} has no known body")
    at = message.occurred_at
    # The reverse of `timestamp`, for the same reason (ToDatetime is slow pure Python).
    occurred_at = _EPOCH + timedelta(seconds=at.seconds, microseconds=at.nanos // 1000)
    return RunEvent(message.run_id, message.sequence, occurred_at, body)


def parse_run_event(data: bytes) -> RunEvent:
    """The run event a stored `agentrt.events.v1.RunEvent` carries, from its bytes.

    Raises:
        ValueError: the bytes are not a run event this executor can read.
    """
    try:
        message = run_events_pb2.RunEvent.FromString(data)
    except DecodeError as e:
        raise ValueError(f"not a stored run event: {e}") from e
    return run_event_of(message)


def queue_figures(report: QueueReport) -> pb.QueueFigures:
    """A queue's report as `QueueFigures` (a figure the broker does not tell stays unset)."""
    figures = pb.QueueFigures(
        name=report.name,
        backend=report.backend,
        available=report.stats is not None,
        error=report.error,
    )
    stats = report.stats
    if stats is not None:
        figures.pending = stats.pending
        figures.dead_letters = stats.dead_letters
        if stats.depth is not None:
            figures.depth = stats.depth
        if stats.oldest_age_seconds is not None:
            figures.oldest_age_seconds = stats.oldest_age_seconds
        if stats.redelivered is not None:
            figures.redelivered = stats.redelivered
    return figures


def run_pb(record: RunRecord) -> pb.Run:
    """The Run message of a record."""
    return pb.Run(
        run_id=record.run_id,
        agent_id=record.agent_id,
        agent_version=record.agent_version,
        status=record.status.value,
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        usage=usage_pb(record.usage),
        error_code=record.error_code,
        error_message=record.error_message,
        task_id=record.task_id,
        context_id=record.context_id,
        tool_calls=record.tool_calls,
        executor_id=record.executor_id,
        owner_id=record.owner_id,
        attempts=record.attempts,
        queued=record.queued,
        metadata=dict_to_struct(dict(record.metadata)) if record.metadata else None,
        multitask_strategy=record.multitask_strategy,
        output=pb.ChatMessage(
            role="assistant",
            content=record.output.content,
            tool_calls=tool_calls_pb(record.output.tool_calls),
        )
        if record.output is not None
        else None,
        finish_reason=record.finish_reason,
        rolled_back=record.rolled_back,
    )


def template_pb(loaded: LoadedTemplate) -> pb.TemplateDescriptor:
    """The TemplateDescriptor message of a served template."""
    d = loaded.descriptor
    out = pb.TemplateDescriptor(
        id=d["id"],
        version=d["version"],
        name=d["name"],
        description=d["description"],
        framework=d["framework"],
        config_schema=dict_to_struct(dict(d["config_schema"])),
    )
    out.config_fields.extend(list(d["config_fields"]))
    return out


def problem_pb(problem: TemplateProblem) -> pb.TemplateProblem:
    """The TemplateProblem message."""
    return pb.TemplateProblem(source=problem.source, error=problem.error)


def failed_run(body: RunFailed) -> pb.RunFailed:
    """The RunFailed message."""
    return pb.RunFailed(code=body.code, message=body.message)


def compose_request(message: pb.ComposeRequest) -> ComposeRequest:
    """The compose request a ComposeRequest message describes."""
    return ComposeRequest(
        template_id=message.template_id,
        instructions=message.instructions,
        suggested_name=message.suggested_name,
        suggested_tools=tuple(message.suggested_tools),
        llm_config_id=message.llm_config_id,
    )


def compose_pb(result: ComposeResult) -> pb.ComposeResponse:
    """The ComposeResponse of a compose result."""
    draft = result.draft
    return pb.ComposeResponse(
        draft=pb.AgentDraft(
            name=draft.name,
            description=draft.description,
            template_id=draft.template_id,
            system_prompt=draft.system_prompt,
            toolsets=list(draft.toolsets),
            template_config=dict_to_struct(dict(draft.template_config)),
            llm_config_id=draft.llm_config_id,
        ),
        valid=result.valid,
        warnings=list(result.warnings),
        usage=usage_pb(result.usage),
    )
