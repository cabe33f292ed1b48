"""Adapter: the run routes — runs as resources (`/v1/runs`).

Every chat completion is a run; `POST /v1/runs` starts one in the background. Each
route parses, calls one application method and renders. Reads need the viewer role,
starting and cancelling the operator role; a key bound to an owner sees only its
owner's runs.

`GET /v1/runs/{run_id}/events` follows a run's events as server-sent events, from its
first or after the one the client names (`Last-Event-ID`, `?after=`), up to its last.
It holds one of the caller's stream slots; a comment line keeps it alive while the run
is quiet; a gateway that is stopping ends it with an `error` event the client resumes
from. Leaving the stream never changes the run.
"""

# No `from __future__ import annotations`: the route signatures use dependencies
# built when the routes are (FastAPI evaluates annotations against module globals).

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic.json_schema import SkipJsonSchema

from agent_gateway.adapters.access import Access
from agent_gateway.adapters.edge import note
from agent_gateway.adapters.openai_render import KEEPALIVE
from agent_gateway.adapters.openapi import (
    BODY,
    RUN_EVENTS,
    RUN_STARTED,
    SERVICE,
    Run,
    RunCancel,
    RunList,
    documented,
)
from agent_gateway.adapters.routing import both
from agent_gateway.adapters.run_render import accepted, error_frame, event_frame, run_body
from agent_gateway.adapters.run_request import IDEMPOTENCY_PARAMETER, RunRequest, keyed_run_id
from agent_gateway.adapters.streaming import RelayResponse, Stopping, paced
from agent_gateway.application.chat import Chat
from agent_gateway.application.runs import EventFeed, Runs
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.runs import RunQuery
from agentrt_kit.errors import AgentrtError

log = logging.getLogger(__name__)

# Run, agent and task ids: 1-128 of [A-Za-z0-9._:-], alphanumeric first (as they are made).
RunId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
Filter = Annotated[str, Query(pattern=r"^([A-Za-z0-9][A-Za-z0-9._:-]{0,127})?$")]
Sequence = Annotated[
    int, Query(ge=0, le=10**15, description="Send the events after this one (0: all).")
]
# Typed as text, as headers are: an event id this API wrote is a sequence number.
LastEventId = Annotated[
    str | SkipJsonSchema[None],  # absent, never null
    Header(
        alias="Last-Event-ID",
        pattern=r"^([0-9]{1,15})?$",
        json_schema_extra={"pattern": r"^([0-9]{1,15})?$"},  # (`pattern` alone is not shown)
        description="The `id` of the last event read: resume after it (wins over `after`); "
        "empty: none read.",
    ),
]


def run_routes(
    v1: APIRouter,
    access: Access,
    runs: Runs,
    chat: Chat,
    *,
    keepalive: float,
    stopping: asyncio.Event,
) -> None:
    """Add the run routes to `v1`."""
    Caller = Annotated[Principal, Depends(access.caller)]
    Operator = Annotated[Principal, Depends(access.operator)]

    @both(v1, "/runs", **documented(RunList, 400, 422, *SERVICE, op="listRuns", tag="runs"))
    async def list_runs(
        caller: Caller,
        *,
        agent_id: Filter = "",
        task_id: Filter = "",
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        page_token: Annotated[str, Query(max_length=1024)] = "",
    ) -> dict[str, Any]:
        """Runs the caller may see, newest first, paged (`next_page_token`)."""
        found, next_token = await runs.page(
            caller, RunQuery(agent_id, task_id, status or "", "", limit, page_token)
        )
        return {"runs": [run_body(r) for r in found], "next_page_token": next_token or None}

    @both(
        v1,
        "/runs",
        "POST",
        status_code=202,
        **documented(
            Run,
            *BODY,
            403,
            404,
            409,
            *SERVICE,
            status=202,
            description="The run, queued (or, for a retry with the same `Idempotency-Key`, "
            "the run the first request started, as it is now).",
            headers=RUN_STARTED,
            op="createRun",
            tag="runs",
        ),
        openapi_extra={"parameters": [IDEMPOTENCY_PARAMETER]},
    )
    async def create_run(request: Request, body: RunRequest, caller: Operator) -> JSONResponse:
        """Start a run of the agent in the background (202); it runs on any replica."""
        note(request.state, target=body.agent_id, agent_id=body.agent_id)
        run, created = await chat.start(caller, body.to_start(keyed_run_id(request, caller)))
        note(request.state, target=run.run_id, run_id=run.run_id, task_id=run.task_id)
        return accepted(run, created)

    @both(v1, "/runs/{run_id}", **documented(Run, 404, 422, *SERVICE, op="getRun", tag="runs"))
    async def get_run(caller: Caller, run_id: RunId) -> dict[str, Any]:
        """One run: status, agent version, timings, usage, output, error, replica, attempts."""
        return run_body(await runs.get(caller, run_id))

    @both(
        v1,
        "/runs/{run_id}/wait",
        **documented(
            Run,
            404,
            422,
            *SERVICE,
            description="The run once it has ended, or as it is when the timeout passed "
            "(its `status` tells which).",
            op="waitRun",
            tag="runs",
        ),
    )
    async def wait_run(
        caller: Caller,
        run_id: RunId,
        timeout: Annotated[float, Query(ge=0, le=300)] = 30.0,
    ) -> dict[str, Any]:
        """Join a run: answers when it ends, or after `timeout` seconds (0 to 300, default 30)."""
        return run_body(await runs.wait(caller, run_id, timeout))

    @both(
        v1,
        "/runs/{run_id}/events",
        **documented(
            None,
            404,
            422,
            *SERVICE,
            description="The run's events as server-sent events, up to its last.",
            content=RUN_EVENTS,
            op="streamRunEvents",
            tag="runs",
        ),
    )
    async def run_events(
        caller: Caller,
        run_id: RunId,
        after: Sequence = 0,
        last_event_id: LastEventId = None,
    ) -> RelayResponse:
        """Follow the run's events (SSE); resume after `Last-Event-ID` (or `?after=`)."""
        # An EventSource resumes with the URL it began with and the last id it read.
        start = int(last_event_id) if last_event_id else after
        feed = await runs.events(caller, run_id, start)
        return RelayResponse(_follow(feed, keepalive, stopping), feed.close)

    @both(
        v1,
        "/runs/{run_id}/cancel",
        "POST",
        status_code=202,
        **documented(RunCancel, 403, 404, 422, *SERVICE, status=202, op="cancelRun", tag="runs"),
    )
    async def cancel_run(
        request: Request,
        caller: Operator,
        run_id: RunId,
        action: Annotated[
            Literal["interrupt", "rollback"],
            Query(description="interrupt: stop it, keep what it did; rollback: also undo it"),
        ] = "interrupt",
    ) -> dict[str, Any]:
        """Ask the run to stop; it is recorded as cancelled when it has (202)."""
        run, cancelled = await runs.cancel(caller, run_id, rollback=action == "rollback")
        note(request.state, target=run_id, run_id=run_id, agent_id=run.agent_id)
        return {"cancelled": cancelled, "run": run_body(run)}


async def _follow(
    feed: EventFeed, keepalive: float, stopping: asyncio.Event
) -> AsyncIterator[bytes]:
    """The SSE frames of a run's events, until its last (or an `error` frame)."""
    run_id = feed.run.run_id
    try:
        async for event in paced(feed.events(), keepalive=keepalive, stopping=stopping):
            yield KEEPALIVE if event is None else event_frame(run_id, event)
    except Stopping:
        yield error_frame(run_id, "GATEWAY_STOPPING", "the gateway is stopping; resume the stream")
    except AgentrtError as e:  # the executor went away, or refused
        yield error_frame(run_id, e.reason, e.message)
    except Exception:  # a gateway bug: end the stream, say so
        log.exception("following a run failed", extra={"run_id": run_id})
        yield error_frame(run_id, "INTERNAL", "the gateway failed; resume the stream")
