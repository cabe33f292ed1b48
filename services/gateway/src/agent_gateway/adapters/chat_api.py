"""Adapter: the routes the model serves — chat completions and agent drafts.

`POST /v1/chat/completions` is OpenAI-compatible; `POST /v1/agents/compose` drafts
an agent with the model (the executor's Compose) and creates nothing.

`model` names the agent. A non-streamed completion is one `Execute` call; a
streamed one relays `ExecuteStream` chunk by chunk, never buffered: the stream
opens only once the run has started (an unknown agent is a 404 before any byte),
and a client that goes away cancels the run. Request-level sampling parameters
reach the model. Bad input is a 400 naming the field, as OpenAI's API answers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, Protocol

from annotated_types import Len
from fastapi import APIRouter, Request
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from starlette.responses import JSONResponse, StreamingResponse

from agent_gateway.adapters.access import Operator
from agent_gateway.adapters.agents_api import Agents, visible
from agent_gateway.adapters.asgi import Receive, Scope, Send
from agent_gateway.adapters.edge import note
from agent_gateway.adapters.openapi import (
    BODY,
    SERVICE,
    STREAM,
    ChatCompletion,
    Composed,
    documented,
)
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.chat import (
    ChunkWriter,
    ComposeInput,
    Delta,
    Finished,
    Message,
    RunInput,
    RunResult,
    completion_body,
    failure_text,
    new_task_id,
)
from agent_gateway.domain.errors import ApiError, field_error
from agent_gateway.domain.stats import ExecutionStats

Id = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9._:@/+=-]*$")]


def _integral(value: Any) -> Any:
    """2.0 is an integer in JSON Schema (and in the document); strict mode alone refuses it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Bodies are checked strictly (no "1" for 1, no 0 for false), as the document types them.
Integral = BeforeValidator(_integral)


class TextPart(BaseModel):
    """A content part: only text is accepted."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: Annotated[str, StringConstraints(max_length=32_000)]


class ChatMessageIn(BaseModel):
    """One message (`developer` is taken as `system`, as OpenAI's newer clients send it)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, StringConstraints(max_length=32_000)] | list[TextPart] | None = None
    name: Annotated[str, StringConstraints(max_length=64)] | None = None
    tool_call_id: Annotated[str, StringConstraints(max_length=128)] | None = None

    def text(self) -> str:
        """The message's text."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` means something here."""

    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatMetadata(BaseModel):
    """`metadata`: the conversation (`task_id`), the caller's context and user."""

    model_config = ConfigDict(extra="ignore", strict=True)

    task_id: Id | None = None
    context_id: Id | None = None
    user_id: Id | None = None


class ChatRequest(BaseModel):
    """The request body; parameters OpenAI clients send that do not apply are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    messages: Annotated[
        list[ChatMessageIn],
        Len(1, 1000),
        Field(
            description="At least one `user` message; at most the gateway's `max_messages` "
            "(100 by default, 400 beyond) of at most `max_message_chars` characters each.",
            json_schema_extra={"contains": {"properties": {"role": {"const": "user"}}}},
        ),
    ]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000), Integral] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=1_000_000), Integral] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stop: (
        Annotated[str, StringConstraints(max_length=256)]
        | Annotated[list[Annotated[str, StringConstraints(max_length=256)]], Len(0, 4)]
        | None
    ) = None
    n: Annotated[int, Field(ge=1, le=1), Integral] | None = None
    user: Id | None = None
    metadata: ChatMetadata | None = None

    @model_validator(mode="after")
    def _has_user_text(self) -> ChatRequest:
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages must include a user message")
        return self

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters given (max_tokens, or else max_completion_tokens)."""
        values: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens or self.max_completion_tokens,
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }
        if self.stop is not None:
            values["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return {k: v for k, v in values.items() if v is not None}


class Runs(Protocol):
    """Where agents run (the executor)."""

    async def execute(self, run: RunInput, *, timeout: float) -> RunResult:
        """Run to the end (raises ApiError)."""
        ...

    async def stream(self, run: RunInput, *, timeout: float) -> Any:
        """An open streamed run: `.started`, `.events()`, `.close()` (raises ApiError)."""
        ...

    async def compose(self, request: ComposeInput, *, timeout: float) -> dict[str, Any]:
        """An agent draft and its validation (raises ApiError)."""
        ...


ToolName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ComposeRequest(BaseModel):
    """`POST /v1/agents/compose`: what the agent should do, and hints."""

    model_config = ConfigDict(extra="ignore", strict=True)

    template_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    instructions: Annotated[str, StringConstraints(min_length=1, max_length=8_000)]
    suggested_name: Annotated[str, StringConstraints(max_length=100)] | None = None
    suggested_tools: Annotated[list[ToolName], Len(0, 50)] | None = None
    llm_config_id: Annotated[str, StringConstraints(max_length=128)] | None = None


class RelayResponse(StreamingResponse):
    """A stream whose `on_close` runs however the response ends, even before it began."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; then release what it held."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def chat_routes(
    v1: APIRouter,
    runs: Runs,
    agents: Agents,
    stats: ExecutionStats,
    *,
    run_timeout: float,
    max_messages: int,
    max_message_chars: int,
    both: Callable[..., Callable[[Any], Any]],
) -> None:
    """Add the chat completion and compose routes to `v1`."""

    def run_of(body: ChatRequest, caller: Principal) -> RunInput:
        if len(body.messages) > max_messages:
            raise _bad("messages", f"at most {max_messages} messages are accepted")
        for index, message in enumerate(body.messages):
            if len(message.text()) > max_message_chars:
                raise _bad(f"messages.{index}.content", f"at most {max_message_chars} characters")
        meta = body.metadata or ChatMetadata()
        return RunInput(
            agent_id=body.model,
            messages=tuple(
                Message(
                    role="system" if m.role == "developer" else m.role,
                    content=m.text(),
                    name=m.name or "",
                    tool_call_id=m.tool_call_id or "",
                )
                for m in body.messages
            ),
            sampling=body.sampling(),
            task_id=meta.task_id or new_task_id(),
            context_id=meta.context_id or "",
            user_id=meta.user_id or body.user or "",
        )

    @both(
        v1,
        "/agents/compose",
        "POST",
        **documented(Composed, *BODY, 403, 404, 409, *SERVICE),
    )
    async def compose(request: Request, body: ComposeRequest, caller: Operator) -> dict[str, Any]:
        """Draft an agent with the model from instructions; validates it, creates nothing."""
        note(request.state, target=body.template_id)
        return await runs.compose(
            ComposeInput(
                template_id=body.template_id,
                instructions=body.instructions,
                suggested_name=body.suggested_name or "",
                suggested_tools=tuple(body.suggested_tools or ()),
                llm_config_id=body.llm_config_id or "",
            ),
            timeout=run_timeout,
        )

    @both(
        v1,
        "/chat/completions",
        "POST",
        **documented(
            ChatCompletion,
            400,
            403,
            404,
            409,
            413,
            500,
            502,
            *SERVICE,
            description="The completion; with `stream: true`, its chunks as server-sent events.",
            content=STREAM,
        ),
    )
    async def chat_completions(request: Request, body: ChatRequest, caller: Operator) -> Any:
        """Run the agent named by `model` on the messages; JSON, or SSE when `stream`."""
        note(request.state, target=body.model, agent_id=body.model)
        run = run_of(body, caller)
        note(request.state, task_id=run.task_id)
        await visible(agents, caller, body.model)
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _streamed(
                request=request,
                runs=runs,
                stats=stats,
                run=run,
                caller=caller,
                run_timeout=run_timeout,
                created=created,
                model=body.model,
                include_usage=include_usage,
            )
        with stats.measure() as measured:
            result = await runs.execute(run, timeout=run_timeout)
            note(request.state, run_id=result.run_id, task_id=result.task_id)
            if result.finish_reason not in ("stop", "length"):
                measured.failed = True
                raise _run_failed(result)
        # A ready response: FastAPI's generic encoder would cost more than the rest of the route.
        return JSONResponse(completion_body(result, body.model, created))


async def _streamed(
    *,
    request: Request,
    runs: Runs,
    stats: ExecutionStats,
    run: RunInput,
    caller: Principal,
    run_timeout: float,
    created: int,
    model: str,
    include_usage: bool,
) -> RelayResponse:
    slots = request.app.state.gate.streams
    if not slots.acquire(caller.id):
        raise ApiError(
            429,
            "RATE_LIMIT_EXCEEDED",
            f"at most {slots.limit} streams may be open per key",
            details={"scope": "streams", "limit": slots.limit},
            headers={"Retry-After": "1"},
        )
    measured = stats.begin()
    try:
        stream = await runs.stream(run, timeout=run_timeout)
    except BaseException:
        slots.release(caller.id)
        measured.end(failed=True)
        raise
    note(request.state, run_id=stream.started.run_id, task_id=stream.started.task_id)
    writer = ChunkWriter(stream.started, model, created, include_usage=include_usage)
    closed = False

    def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            stream.close()
            slots.release(caller.id)
            measured.end(failed=measured.failed or not measured.finished)

    async def relay() -> AsyncIterator[bytes]:
        yield writer.opening()
        try:
            async for event in stream.events():
                if isinstance(event, Delta):
                    yield writer.delta(event.content)
                elif isinstance(event, Finished):
                    measured.finished = True
                    if event.finish_reason not in ("stop", "length"):
                        measured.failed = True
                        note(request.state, failed="yes", detail=failure_text(event))
                    yield writer.closing(event)
        except ApiError as e:
            measured.finished = True
            measured.failed = True
            note(request.state, failed="yes", detail=e.message)
            yield writer.failure(e.message)

    return RelayResponse(relay(), close)


def _bad(field: str, description: str) -> ApiError:
    return field_error(f"body.{field}", description, f"{field}: {description}")


def _run_failed(result: RunResult) -> ApiError:
    """A run that ended without a message, as an HTTP error (408 on its timeout)."""
    status = {"TIMEOUT": 408, "PROVIDER_ERROR": 502}.get(result.error_code, 500)
    code = "TIMEOUT_ERROR" if status == 408 else "EXECUTION_ERROR"
    return ApiError(
        status,
        code,
        failure_text(result),
        details={
            "reason": result.error_code or "EXECUTION_ERROR",
            "run_id": result.run_id,
            "task_id": result.task_id,
            "finish_reason": result.finish_reason,
        },
    )
