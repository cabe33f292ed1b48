"""Adapter: the run routes — runs as resources (`/v1/runs`).

Every chat completion is a run. Each route parses, calls one `application.runs.Runs`
method and renders. Reads need the viewer role, cancelling the operator role; a key
bound to an owner sees only its owner's runs.
"""

# No `from __future__ import annotations`: the route signatures use dependencies
# built when the routes are (FastAPI evaluates annotations against module globals).

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from agent_gateway.adapters.access import Access
from agent_gateway.adapters.edge import note
from agent_gateway.adapters.openai_render import usage_body
from agent_gateway.adapters.openapi import SERVICE, Run, RunCancel, RunList, documented
from agent_gateway.adapters.routing import both
from agent_gateway.application.runs import Runs
from agent_gateway.domain.agents import iso
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.runs import RunQuery, RunRecord

# Run, agent and task ids: 1-128 of [A-Za-z0-9._:-], alphanumeric first (as they are made).
RunId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
Filter = Annotated[str, Query(pattern=r"^([A-Za-z0-9][A-Za-z0-9._:-]{0,127})?$")]


def run_body(run: RunRecord) -> dict[str, Any]:
    """A run as `/v1/runs` answers it."""
    error = {"code": run.error_code, "message": run.error_message} if run.error_code else None
    return {
        "run_id": run.run_id,
        "agent_id": run.agent_id,
        "agent_version": run.agent_version,
        "status": run.status,
        "task_id": run.task_id,
        "context_id": run.context_id or None,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "usage": usage_body(run.usage),
        "tool_calls": run.tool_calls,
        "error": error,
        "executor_id": run.executor_id or None,
        "attempts": run.attempts,
    }


def run_routes(v1: APIRouter, access: Access, runs: Runs) -> None:
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

    @both(v1, "/runs/{run_id}", **documented(Run, 404, 422, *SERVICE, op="getRun", tag="runs"))
    async def get_run(caller: Caller, run_id: RunId) -> dict[str, Any]:
        """One run: status, agent version, timings, usage, error, replica, attempts."""
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
        "/runs/{run_id}/cancel",
        "POST",
        status_code=202,
        **documented(RunCancel, 403, 404, 422, *SERVICE, status=202, op="cancelRun", tag="runs"),
    )
    async def cancel_run(request: Request, caller: Operator, run_id: RunId) -> dict[str, Any]:
        """Ask the run to stop; it is recorded as cancelled when it has (202)."""
        run, cancelled = await runs.cancel(caller, run_id)
        note(request.state, target=run_id, run_id=run_id, agent_id=run.agent_id)
        return {"cancelled": cancelled, "run": run_body(run)}
