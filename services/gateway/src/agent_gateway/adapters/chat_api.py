"""Adapter: the routes the model serves — chat completions and agent drafts.

`POST /v1/chat/completions` is OpenAI-compatible; `POST /v1/agents/compose` drafts
an agent with the model (the executor's Compose) and creates nothing. Each route
parses, calls one `application.chat.Chat` method and renders.

A streamed completion relays the run event by event, never buffered: the stream
opens only once the run has started (an unknown agent is a 404 before any byte), a
comment line keeps it alive while the run is quiet, and a client that goes away
cancels the run.
"""

# No `from __future__ import annotations`: the route signatures use dependencies
# built when the routes are (FastAPI evaluates annotations against module globals).

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from annotated_types import Len
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.responses import JSONResponse, StreamingResponse

from agent_gateway.adapters.access import Access
from agent_gateway.adapters.asgi import Receive, Scope, Send
from agent_gateway.adapters.chat_request import ChatRequest
from agent_gateway.adapters.edge import note
from agent_gateway.adapters.openai_render import (
    KEEPALIVE,
    ChunkWriter,
    completion_body,
    usage_body,
)
from agent_gateway.adapters.openapi import (
    BODY,
    SERVICE,
    STREAM,
    ChatCompletion,
    Composed,
    documented,
)
from agent_gateway.adapters.routing import both
from agent_gateway.application.chat import Chat, ChatStream
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.chat import (
    FINISHED_WELL,
    ComposeInput,
    Delta,
    Finished,
    Progress,
    ToolCalls,
    Usage,
    failure_text,
)
from agent_gateway.errors import bad_fields
from agentrt_kit.concurrency import cancel_and_wait
from agentrt_kit.errors import FieldViolation

log = logging.getLogger(__name__)

PROGRESS_HEADER = "X-Agentrt-Progress"
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


# Read from the request in the route (a declared header parameter costs every request a
# resolution step); documented as a parameter of the operation.
PROGRESS_PARAMETER = {
    "name": PROGRESS_HEADER,
    "in": "header",
    "required": False,
    "description": "`true`: stream the agent's tool calls and workflow steps as "
    "`agentrt.*` events (as the body's `progress_events`).",
    "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
}


def chat_routes(v1: APIRouter, access: Access, chat: Chat, *, keepalive: float) -> None:
    """Add the chat completion and compose routes to `v1`."""
    Operator = Annotated[Principal, Depends(access.operator)]

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
            op="createChatCompletion",
            tag="openai",
        ),
        openapi_extra={"parameters": [PROGRESS_PARAMETER]},
    )
    async def chat_completions(request: Request, body: ChatRequest, caller: Operator) -> Any:
        """Run the agent named by `model` on the messages; JSON, or SSE when `stream`."""
        note(request.state, target=body.model, agent_id=body.model)
        refused = body.refusals()
        if refused:
            raise bad_fields([FieldViolation(f"body.{f}", why) for f, why in refused])
        run = body.to_run()
        note(request.state, task_id=run.task_id)
        created = int(time.time())
        if body.stream:
            progress = request.headers.get(PROGRESS_HEADER, "").lower()
            wanted = body.progress_events or progress in ("true", "1")
            stream = await chat.stream(caller, run, progress=wanted)
            started = stream.started
            note(request.state, run_id=started.run_id, task_id=started.task_id)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            writer = ChunkWriter(started, body.model, created, include_usage=include_usage)
            return RelayResponse(_relay(request, stream, writer, keepalive), stream.close)
        result = await chat.complete(caller, run)
        note(request.state, run_id=result.run_id, task_id=result.task_id)
        # A ready response: FastAPI's generic encoder would cost more than the rest of the route.
        return JSONResponse(completion_body(result, body.model, created))

    @both(
        v1,
        "/agents/compose",
        "POST",
        **documented(Composed, *BODY, 403, 404, 409, *SERVICE, op="composeAgent", tag="agents"),
    )
    async def compose(request: Request, body: ComposeRequest, caller: Operator) -> Any:
        """Draft an agent with the model from instructions; validates it, creates nothing."""
        note(request.state, target=body.template_id)
        composed = await chat.compose(
            ComposeInput(
                template_id=body.template_id,
                instructions=body.instructions,
                suggested_name=body.suggested_name or "",
                suggested_tools=tuple(body.suggested_tools or ()),
                llm_config_id=body.llm_config_id or "",
            ),
        )
        return {
            "success": True,
            "draft": dict(composed.draft),
            "validation_results": {"valid": composed.valid, "warnings": list(composed.warnings)},
            "usage": usage_body(composed.usage),
        }


async def _relay(
    request: Request, stream: ChatStream, writer: ChunkWriter, keepalive: float
) -> AsyncIterator[bytes]:
    """The SSE frames of a run; a comment line every `keepalive` seconds while it is quiet.

    The run's events are read by a task of their own into a queue, so waiting for the
    next one can time out without cancelling the read of the gRPC stream.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in stream.events():
                queue.put_nowait(event)
        except Exception:  # a gateway bug: end the stream as OpenAI's clients expect
            log.exception("relaying a run failed", extra={"run_id": stream.started.run_id})
            queue.put_nowait(Finished("error", Usage(), "INTERNAL", "the gateway failed"))
        finally:
            queue.put_nowait(None)

    reader = asyncio.create_task(pump(), name="chat-stream-reader")
    try:
        yield writer.opening()
        while True:
            if queue.empty():
                try:
                    async with asyncio.timeout(keepalive):
                        event = await queue.get()
                except TimeoutError:
                    yield KEEPALIVE
                    continue
            else:
                event = queue.get_nowait()
            if event is None:
                return
            if isinstance(event, Delta):
                yield writer.delta(event.content)
            elif isinstance(event, ToolCalls):
                yield writer.tool_calls(event.calls)
            elif isinstance(event, Progress):
                yield writer.progress(event)
            elif isinstance(event, Finished):
                if event.finish_reason not in FINISHED_WELL:
                    note(request.state, failed="yes", detail=stream.failure or failure_text(event))
                yield writer.closing(event)
    finally:
        await cancel_and_wait(reader)
