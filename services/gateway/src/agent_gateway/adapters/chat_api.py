"""Adapter: the routes the model serves — chat completions and agent drafts.

`POST /v1/chat/completions` is OpenAI-compatible; `POST /v1/agents/compose` drafts
an agent with the model (the executor's Compose) and creates nothing. Each route
parses, calls one `application.chat.Chat` method and renders.

A streamed completion relays the run event by event, never buffered: the stream
opens only once the run has started (an unknown agent is a 404 before any byte), a
comment line keeps it alive while the run is quiet, and a client that goes away
cancels the run. A gateway that is stopping (`draining`) ends a stream still open with
an error chunk saying where to pick the run up, and answers a completion still waiting
503 naming its run: the run goes on.

A completion asked for in the background (`Prefer: respond-async`, or
`metadata.background`) is queued instead and answered 202 with the run; nothing the
client does afterwards cancels it. `Idempotency-Key` makes either kind safe to retry.
"""

# No `from __future__ import annotations`: the route signatures use dependencies
# built when the routes are (FastAPI evaluates annotations against module globals).

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from annotated_types import Len
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.responses import JSONResponse

from agent_gateway.adapters.access import Access
from agent_gateway.adapters.chat_request import ChatRequest
from agent_gateway.adapters.edge import note, respond_with
from agent_gateway.adapters.http_errors import RUN_ID_HEADER
from agent_gateway.adapters.openai_render import (
    KEEPALIVE,
    ChunkWriter,
    completion_body,
    usage_body,
)
from agent_gateway.adapters.openapi import (
    BODY,
    RUN_ACCEPTED,
    SERVICE,
    STREAM,
    ChatCompletion,
    Composed,
    documented,
)
from agent_gateway.adapters.routing import both
from agent_gateway.adapters.run_render import accepted
from agent_gateway.adapters.run_request import (
    IDEMPOTENCY_PARAMETER,
    PREFER_PARAMETER,
    keyed_run_id,
    prefers_async,
)
from agent_gateway.adapters.streaming import RelayResponse, Stopping, paced
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
from agent_gateway.domain.runs import RunStart
from agent_gateway.errors import bad_field, bad_fields
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


def chat_routes(
    v1: APIRouter, access: Access, chat: Chat, *, keepalive: float, draining: asyncio.Event
) -> None:
    """Add the chat completion and compose routes to `v1`; `draining` ends open streams."""
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
            422,
            500,
            502,
            *SERVICE,
            description="The completion; with `stream: true`, its chunks as server-sent events.",
            content=STREAM,
            op="createChatCompletion",
            tag="openai",
            also=RUN_ACCEPTED,
        ),
        openapi_extra={"parameters": [PROGRESS_PARAMETER, IDEMPOTENCY_PARAMETER, PREFER_PARAMETER]},
    )
    async def chat_completions(request: Request, body: ChatRequest, caller: Operator) -> Any:
        """Run the agent named by `model` on the messages; JSON, or SSE when `stream`.

        In the background (`Prefer: respond-async` or `metadata.background`): 202 with the
        run at once.
        """
        note(request.state, target=body.model, agent_id=body.model)
        refused = body.refusals()
        if refused:
            raise bad_fields([FieldViolation(f"body.{f}", why) for f, why in refused])
        run = body.to_run(keyed_run_id(request, caller))
        note(request.state, task_id=run.task_id, run_id=run.run_id)
        asked_async = prefers_async(request)
        if asked_async or body.background:
            if body.stream:
                raise bad_field(
                    "body.stream",
                    "a background completion is not streamed: follow its events at "
                    "/v1/runs/{run_id}/events",
                )
            record, new = await chat.start(caller, RunStart(run, metadata=body.tags()))
            note(request.state, run_id=record.run_id)
            applied = {"Preference-Applied": "respond-async"} if asked_async else {}
            return accepted(record, new, applied)
        created = int(time.time())
        if body.stream:
            progress = request.headers.get(PROGRESS_HEADER, "").lower()
            wanted = body.progress_events or progress in ("true", "1")
            stream = await chat.stream(caller, run, progress=wanted)
            started = stream.started
            note(request.state, run_id=started.run_id, task_id=started.task_id)
            respond_with(request.state, **{RUN_ID_HEADER: started.run_id})
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            writer = ChunkWriter(started, body.model, created, include_usage=include_usage)
            relay = _relay(request, stream, writer, keepalive, draining)
            return RelayResponse(relay, stream.close)
        result = await chat.complete(caller, run)
        note(request.state, run_id=result.run_id, task_id=result.task_id)
        respond_with(request.state, **{RUN_ID_HEADER: result.run_id})
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
    request: Request,
    stream: ChatStream,
    writer: ChunkWriter,
    keepalive: float,
    draining: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The SSE frames of a run; a comment line every `keepalive` seconds while it is quiet.

    Once `draining` is set the stream ends, detached from its run, which goes on.
    """
    yield writer.opening()
    try:
        async for event in paced(stream.events(), keepalive=keepalive, stopping=draining):
            if event is None:
                yield KEEPALIVE
            elif isinstance(event, Delta):
                yield writer.delta(event.content)
            elif isinstance(event, ToolCalls):
                yield writer.tool_calls(event.calls)
            elif isinstance(event, Progress):
                yield writer.progress(event)
            elif isinstance(event, Finished):
                if event.finish_reason not in FINISHED_WELL:
                    note(request.state, failed="yes", detail=stream.failure or failure_text(event))
                yield writer.closing(event)
                return
    except Stopping:
        stream.detach()
        note(request.state, failed="yes", detail="the gateway stopped; the run goes on")
        yield writer.stopped(stream.sequence)
    except Exception:  # a gateway bug: end the stream as OpenAI's clients expect
        log.exception("relaying a run failed", extra={"run_id": stream.started.run_id})
        yield writer.closing(Finished("error", Usage(), "INTERNAL", "the gateway failed"))
