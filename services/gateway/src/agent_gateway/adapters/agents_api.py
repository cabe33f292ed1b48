"""Adapter: the agent routes (COMPAT) — CRUD, status, history.

Each route parses, calls one `application.agents.Agents` method and renders. Reads
need the viewer role, changes the admin role. Create refuses unknown keys (422, each
named); PUT and PATCH ignore them, as the old runtime did. `Idempotency-Key` makes a
create safe to retry: a retry answers as the first request was answered, with
`Idempotent-Replayed: true`.
"""

# No `from __future__ import annotations`: the route signatures use dependencies
# built when the routes are (FastAPI evaluates annotations against module globals).

from typing import Annotated, Any, Literal

from annotated_types import Len
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.json_schema import SkipJsonSchema

from agent_gateway.adapters.access import Access
from agent_gateway.adapters.edge import note
from agent_gateway.adapters.http_errors import ApiError
from agent_gateway.adapters.openapi import (
    BODY,
    ETAG,
    LOCATION,
    SERVICE,
    Agent,
    Created,
    Deleted,
    History,
    documented,
)
from agent_gateway.adapters.routing import both
from agent_gateway.adapters.run_request import IDEMPOTENCY_HEADER
from agent_gateway.application.agents import AgentQuery, Agents, NewAgent
from agent_gateway.domain.agents import (
    MAX_VERSION,
    AgentRecord,
    agent_body,
    change_body,
    etag,
    expected_version,
)
from agent_gateway.domain.auth import Principal

Text = Annotated[str, StringConstraints(max_length=2_000)]
Name = Annotated[str, StringConstraints(max_length=128)]
Short = Annotated[str, StringConstraints(max_length=64)]
Prompt = Annotated[str, StringConstraints(max_length=32_000)]
AgentName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    # `_printable` checks this; no JSON Schema pattern can say what str.isprintable() does.
    Field(
        description="Printable characters (str.isprintable), not only whitespace.",
        json_schema_extra={"format": "printable"},
    ),
]
Status = Literal["created", "active", "inactive", "error"]
StatusText = Annotated[str, StringConstraints(max_length=64)]  # old clients send any text


def _printable(value: str | None) -> str | None:
    """A name: not blank, no control characters."""
    if value is not None:
        if not value.strip():
            raise ValueError("must not be blank")
        if any(not c.isprintable() for c in value):
            raise ValueError("must not contain control characters")
    return value


class Configuration(BaseModel):
    """The configuration keys: an update's `configuration` object, and top-level keys."""

    model_config = ConfigDict(extra="ignore", strict=True)

    system_prompt: Prompt | None = None
    llm_config_id: Name | None = None
    conversation_config: dict[str, Any] | None = None
    toolsets: Annotated[list[Name], Len(0, 50)] | None = None
    template_config: dict[str, Any] | None = None


class AgentFields(Configuration):
    """The keys create and update bodies share; nulls mean "not given"."""

    description: Text | None = None
    avatar_url: Text | None = None
    type: Short | None = None
    template_id: Name | None = None
    template_version_id: Short | None = None
    agent_line_id: Name | None = None
    version_type: Short | None = None
    version_number: Short | None = None
    owner_id: Name | None = None
    metadata: dict[str, Any] | None = None


class AgentCreate(AgentFields):
    """The create body of COMPAT: every key optional but `name`; unknown keys are refused.

    The old runtime answered an unknown key with 422, and a typo (`tools` for
    `toolsets`) must not create an agent without what was meant. `status` takes any
    text, as the old runtime did: an agent status sets the initial status, anything
    else (the old SDK sends `"draft"`) is ignored with a warning.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    name: AgentName
    status: (
        Annotated[
            StatusText,
            Field(
                description="`created`, `active`, `inactive` or `error` sets the initial "
                "status; any other text (old clients send `draft`) is ignored with a warning."
            ),
        ]
        | None
    ) = None

    _printable_name = field_validator("name")(lambda cls, v: _printable(v))


class AgentUpdate(AgentFields):
    """A partial update (COMPAT): the keys given change, nulls and absent keys do not.

    Both shapes are taken: `configuration{...}` and the create-shaped top-level keys;
    where both give a value, `configuration` wins.
    """

    name: AgentName | None = None
    template_version: Short | None = None
    configuration: Configuration | None = None
    status: (
        Annotated[
            StatusText,
            Field(
                description="Create-shaped: an agent status may only repeat the current one "
                "(409 otherwise; PATCH changes it); any other text is ignored."
            ),
        ]
        | None
    ) = None

    _printable_name = field_validator("name")(lambda cls, v: _printable(v))

    def changes(self) -> dict[str, Any]:
        """The AgentSpec fields to change and their new values."""
        given = self.model_dump(
            exclude={"configuration", "template_version", "status"}, exclude_none=True
        )
        if self.template_version is not None:
            given.setdefault("template_version_id", self.template_version)
        if self.configuration is not None:
            given.update(self.configuration.model_dump(exclude_none=True))
        return given


class StatusChange(BaseModel):
    """The PATCH status body (other keys are ignored, as the old runtime did)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    status: Status


# Read by hand, so that a bad key is a 400 (input refused after parsing), not a 422.
IDEMPOTENCY_PARAMETER = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "Makes the create safe to retry: a retry with the same key answers "
    "201 with the agent the first request created (`Idempotent-Replayed: true`); the key "
    "sent with another body is 422. 1-255 printable ASCII characters (400 otherwise).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when an earlier request with this `Idempotency-Key` created "
        "the agent.",
        "required": False,
        "schema": {"type": "string"},
    }
}
AgentId = Annotated[str, Path(min_length=1, max_length=128)]
# `_pinned` checks it (400 when it is not one of this API's entity tags).
IfMatch = Annotated[
    str | SkipJsonSchema[None],  # absent, never null
    Header(
        description=(
            'Only if the agent is at this version, e.g. `"3"` (412 when it is not); `*`: any.'
        ),
        json_schema_extra={"pattern": r'^((W/)?"[0-9]+"|\*)$'},
    ),
]


def agent_routes(v1: APIRouter, access: Access, agents: Agents) -> None:
    """Add the agent routes to `v1`."""
    Caller = Annotated[Principal, Depends(access.caller)]
    Admin = Annotated[Principal, Depends(access.admin)]

    @both(
        v1, "/agents", **documented(list[Agent], 400, 422, *SERVICE, op="listAgents", tag="agents")
    )
    async def list_agents(
        caller: Caller,
        template_id: Annotated[str, Query(max_length=128)] = "",
        active_only: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[dict[str, Any]]:
        """Agents as a bare JSON array (COMPAT), in the registry's order."""
        query = AgentQuery(template_id, active_only, limit, offset)
        return [agent_body(a) for a in await agents.listing(caller, query)]

    @both(
        v1,
        "/agents/{agent_id}",
        **documented(Agent, 400, 404, 422, *SERVICE, headers=ETAG, op="getAgent", tag="agents"),
    )
    async def get_agent(
        caller: Caller,
        agent_id: AgentId,
        version: Annotated[int, Query(ge=1, le=MAX_VERSION)] | None = None,
    ) -> JSONResponse:
        """One agent, latest or as of `?version=N`; its version is the `ETag`."""
        return _agent(await agents.get(caller, agent_id, version or 0))

    @both(
        v1,
        "/agents/{agent_id}/history",
        **documented(History, 400, 404, 422, *SERVICE, op="getAgentHistory", tag="agents"),
    )
    async def agent_history(
        caller: Caller,
        agent_id: AgentId,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
        page_token: Annotated[str, Query(max_length=512)] = "",
    ) -> dict[str, Any]:
        """The agent's recorded events, oldest first, paged (an addition)."""
        events, next_token = await agents.history(
            caller, agent_id, page_size=page_size, page_token=page_token
        )
        return {"events": [change_body(e) for e in events], "next_page_token": next_token or None}

    @both(
        v1,
        "/agents",
        "POST",
        status_code=201,
        **documented(
            Created,
            *BODY,
            403,
            409,
            *SERVICE,
            status=201,
            description="The agent was created (or, for a retry with the same "
            "`Idempotency-Key`, the first request created it; `ETag` is its version now).",
            headers={**ETAG, **LOCATION, **REPLAYED},
            op="createAgent",
            tag="agents",
        ),
        openapi_extra={"parameters": [IDEMPOTENCY_PARAMETER]},
    )
    async def create_agent(request: Request, caller: Admin, body: AgentCreate) -> JSONResponse:
        """Create an agent (201); the registry validates it; warnings say what to review."""
        created = await agents.create(
            caller,
            NewAgent(
                spec=body.model_dump(exclude={"id", "status"}, exclude_none=True),
                agent_id=body.id or "",
                status=body.status,
                idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
            ),
        )
        agent = created.agent
        note(request.state, target=agent.id, agent_id=agent.id)
        headers = {"ETag": etag(agent), "Location": f"/v1/agents/{agent.id}"}
        if created.replayed:
            headers["Idempotent-Replayed"] = "true"
            note(request.state, detail="HTTP 201: replayed, the Idempotency-Key's first create")
        return JSONResponse(
            {
                "success": True,
                "agent_id": agent.id,
                "message": "Agent created",
                "validation_results": {"valid": True, "warnings": created.warnings},
            },
            status_code=201,
            headers=headers,
        )

    @both(
        v1,
        "/agents/{agent_id}",
        "PUT",
        **documented(
            Agent, *BODY, 403, 404, 409, 412, *SERVICE, headers=ETAG, op="updateAgent", tag="agents"
        ),
    )
    async def update_agent(
        caller: Admin, agent_id: AgentId, body: AgentUpdate, if_match: IfMatch = None
    ) -> JSONResponse:
        """Change the given fields; `If-Match` makes it conditional (412 when stale)."""
        return _agent(
            await agents.update(
                caller, agent_id, body.changes(), status=body.status, expected=_pinned(if_match)
            )
        )

    @both(
        v1,
        "/agents/{agent_id}/status",
        "PATCH",
        **documented(
            Agent,
            *BODY,
            403,
            404,
            409,
            412,
            *SERVICE,
            headers=ETAG,
            op="setAgentStatus",
            tag="agents",
        ),
    )
    async def set_status(
        caller: Admin, agent_id: AgentId, body: StatusChange, if_match: IfMatch = None
    ) -> JSONResponse:
        """Set the agent's status; `If-Match` makes it conditional (412 when stale)."""
        return _agent(await agents.set_status(caller, agent_id, body.status, _pinned(if_match)))

    @both(
        v1,
        "/agents/{agent_id}",
        "DELETE",
        **documented(
            Deleted, 400, 403, 404, 409, 412, 422, *SERVICE, op="deleteAgent", tag="agents"
        ),
    )
    async def delete_agent(caller: Admin, agent_id: AgentId, if_match: IfMatch = None) -> Any:
        """Delete the agent; `If-Match` makes it conditional (412 when stale)."""
        await agents.delete(caller, agent_id, _pinned(if_match))
        return {"success": True, "agent_id": agent_id, "message": "Agent deleted"}


def _agent(agent: AgentRecord) -> JSONResponse:
    return JSONResponse(agent_body(agent), headers={"ETag": etag(agent)})


def _pinned(if_match: str | None) -> int | None:
    """The version `If-Match` pins (400 when it is not one of this API's tags)."""
    try:
        return expected_version(if_match)
    except ValueError:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            'If-Match must be an ETag of this API, e.g. "3"',
            details={
                "fields": [
                    {"field": "header.if-match", "description": f"got {(if_match or '')[:40]!r}"}
                ]
            },
        ) from None
