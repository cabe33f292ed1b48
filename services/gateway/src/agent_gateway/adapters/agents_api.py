"""Adapter: the agent routes (COMPAT) — CRUD, status, history — with roles and owners.

Reads need the viewer role, changes the admin role. A key bound to an owner lists
only that owner's agents, creates agents for that owner, and gets 404 for any other
owner's agent, exactly as for one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Protocol

from annotated_types import Len
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.json_schema import SkipJsonSchema

from agent_gateway.adapters.access import Admin, Caller
from agent_gateway.adapters.edge import note
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
from agent_gateway.domain.agents import (
    AgentChange,
    AgentRecord,
    agent_body,
    change_body,
    etag,
    expected_version,
)
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.errors import agent_not_found, bad_if_match, field_error


class Agents(Protocol):
    """Where agents come from (the registry)."""

    async def get(self, agent_id: str, version: int = 0) -> AgentRecord:
        """One agent (raises ApiError)."""
        ...

    async def history(
        self, agent_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[AgentChange], str]:
        """A page of the agent's events and the next token (raises ApiError)."""
        ...

    async def list(
        self, *, template_id: str, active_only: bool, limit: int, offset: int, owner_id: str = ""
    ) -> list[AgentRecord]:
        """A page of agents (raises ApiError)."""
        ...


class AgentWrites(Protocol):
    """Where agents are changed (the registry)."""

    async def create(
        self, agent_id: str, spec: Mapping[str, Any], status: str | None
    ) -> tuple[AgentRecord, list[str]]:
        """A new agent and warnings (raises ApiError)."""
        ...

    async def update(
        self, agent_id: str, changes: Mapping[str, Any], expected: int | None
    ) -> tuple[AgentRecord, list[str]]:
        """The updated agent and warnings (raises ApiError)."""
        ...

    async def set_status(self, agent_id: str, status: str, expected: int | None) -> AgentRecord:
        """The agent with its new status (raises ApiError)."""
        ...

    async def delete(self, agent_id: str, expected: int | None) -> None:
        """Delete the agent (raises ApiError)."""
        ...


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
    """The keys create and update bodies share; nulls mean "not given".

    Keys this API does not know are ignored: old clients send what they always sent.
    """

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
    """The create body of COMPAT: every key optional but `name`."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    name: AgentName
    status: Status | None = None

    _printable_name = field_validator("name")(lambda cls, v: _printable(v))


class AgentUpdate(AgentFields):
    """A partial update (COMPAT): the keys given change, nulls and absent keys do not.

    Both shapes are taken: `configuration{...}` and the create-shaped top-level keys;
    where both give a value, `configuration` wins.
    """

    name: AgentName | None = None
    template_version: Short | None = None
    configuration: Configuration | None = None
    status: Status | None = None  # create-shaped; may only repeat the current status

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
    """The PATCH status body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    status: Status


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


async def visible(agents: Agents, caller: Principal, agent_id: str) -> AgentRecord | None:
    """Refuse (404) an agent the caller's owner does not own; free for unbound keys.

    Returns:
        The agent as it is now, for an owner-bound caller (None for others: not read).
    """
    if caller.owner is None:
        return None
    latest = await agents.get(agent_id)
    if latest.owner_id != caller.owner:
        raise agent_not_found(agent_id)
    return latest


def agent_routes(
    v1: APIRouter,
    agents: Agents,
    writes: AgentWrites,
    both: Callable[..., Callable[[Any], Any]],
) -> None:
    """Add the agent routes to `v1`."""

    @both(v1, "/agents", **documented(list[Agent], 400, 422, *SERVICE))
    async def list_agents(
        caller: Caller,
        template_id: Annotated[str, Query(max_length=128)] = "",
        active_only: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[dict[str, Any]]:
        """Agents as a bare JSON array (COMPAT), in the registry's order."""
        found = await agents.list(
            template_id=template_id,
            active_only=active_only,
            limit=limit,
            offset=offset,
            owner_id=caller.owner or "",
        )
        return [agent_body(a) for a in found]

    @both(v1, "/agents/{agent_id}", **documented(Agent, 400, 404, 422, *SERVICE, headers=ETAG))
    async def get_agent(
        caller: Caller,
        agent_id: AgentId,
        version: Annotated[int, Query(ge=1)] | None = None,
    ) -> JSONResponse:
        """One agent, latest or as of `?version=N`; its version is the `ETag`."""
        # An owner-bound key sees the agent only while its owner holds it now, and only the
        # versions of its current lifecycle (a deleted id may have been registered again).
        latest = await visible(agents, caller, agent_id)
        if latest is not None and not version:
            agent = latest  # read once already
        else:
            agent = await agents.get(agent_id, version or 0)
            if latest is not None and agent.created_at != latest.created_at:
                raise agent_not_found(agent_id)
        return JSONResponse(agent_body(agent), headers={"ETag": etag(agent)})

    @both(v1, "/agents/{agent_id}/history", **documented(History, 400, 404, 422, *SERVICE))
    async def agent_history(
        caller: Caller,
        agent_id: AgentId,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
        page_token: Annotated[str, Query(max_length=512)] = "",
    ) -> dict[str, Any]:
        """The agent's recorded events, oldest first, paged (an addition)."""
        latest = await visible(agents, caller, agent_id)
        events, next_token = await agents.history(
            agent_id, page_size=page_size, page_token=page_token
        )
        if latest is not None and latest.created_at is not None:
            # Owner-bound keys see the current lifecycle only: before a re-registration the
            # id may have belonged to another owner.
            since = latest.created_at
            events = [e for e in events if e.occurred_at is not None and e.occurred_at >= since]
        return {"events": [change_body(e) for e in events], "next_page_token": next_token or None}

    @both(
        v1,
        "/agents",
        "POST",
        status_code=201,
        **documented(Created, *BODY, 403, 409, *SERVICE, status=201, headers={**ETAG, **LOCATION}),
    )
    async def create_agent(request: Request, caller: Admin, body: AgentCreate) -> JSONResponse:
        """Create an agent (201); the registry validates its template config."""
        values = body.model_dump(exclude={"id", "status"}, exclude_none=True)
        if caller.owner is not None:
            _own(caller, body.owner_id)
            values["owner_id"] = caller.owner
        agent, warnings = await writes.create(body.id or "", values, body.status)
        note(request.state, target=agent.id, agent_id=agent.id)
        return JSONResponse(
            {
                "success": True,
                "agent_id": agent.id,
                "message": "Agent created",
                "validation_results": {"valid": True, "warnings": warnings},
            },
            status_code=201,
            headers={"ETag": etag(agent), "Location": f"/v1/agents/{agent.id}"},
        )

    @both(
        v1,
        "/agents/{agent_id}",
        "PUT",
        **documented(Agent, *BODY, 403, 404, 409, 412, *SERVICE, headers=ETAG),
    )
    async def update_agent(
        caller: Admin,
        agent_id: AgentId,
        body: AgentUpdate,
        if_match: IfMatch = None,
    ) -> JSONResponse:
        """Change the given fields; `If-Match` makes it conditional (412 when stale)."""
        expected = _pinned(if_match)
        changes = body.changes()
        current = None
        if caller.owner is not None:
            _own(caller, changes.get("owner_id"))
            current = await visible(agents, caller, agent_id)
        if body.status is not None:
            current = current or await agents.get(agent_id)
            _unchanged_status(current, body.status)
        agent, _ = await writes.update(agent_id, changes, expected)
        return JSONResponse(agent_body(agent), headers={"ETag": etag(agent)})

    @both(
        v1,
        "/agents/{agent_id}/status",
        "PATCH",
        **documented(Agent, *BODY, 403, 404, 409, 412, *SERVICE, headers=ETAG),
    )
    async def set_status(
        caller: Admin,
        agent_id: AgentId,
        body: StatusChange,
        if_match: IfMatch = None,
    ) -> JSONResponse:
        """Set the agent's status; `If-Match` makes it conditional (412 when stale)."""
        expected = _pinned(if_match)
        await visible(agents, caller, agent_id)
        agent = await writes.set_status(agent_id, body.status, expected)
        return JSONResponse(agent_body(agent), headers={"ETag": etag(agent)})

    @both(
        v1,
        "/agents/{agent_id}",
        "DELETE",
        **documented(Deleted, 400, 403, 404, 409, 412, 422, *SERVICE),
    )
    async def delete_agent(
        caller: Admin, agent_id: AgentId, if_match: IfMatch = None
    ) -> dict[str, Any]:
        """Delete the agent; `If-Match` makes it conditional (412 when stale)."""
        expected = _pinned(if_match)
        await visible(agents, caller, agent_id)
        await writes.delete(agent_id, expected)
        return {"success": True, "agent_id": agent_id, "message": "Agent deleted"}


def _unchanged_status(current: AgentRecord, status: str) -> None:
    """A PUT may repeat the current status, not change it (two writes could half-apply).

    Raises:
        ApiError: 422 naming `body.status` when `status` differs from the agent's.
    """
    if status != current.status:
        raise field_error(
            "body.status",
            f"is {current.status!r}; change it with PATCH",
            "body.status: a PUT may repeat the current status but not change it; "
            "use PATCH /v1/agents/{id}/status",
            status=422,
        )


def _own(caller: Principal, owner_id: str | None) -> None:
    """An owner-bound key may only name its own owner."""
    if owner_id is not None and owner_id != caller.owner:
        raise field_error(
            "body.owner_id",
            "not this key's owner",
            "this key may only manage agents of its own owner",
            status=403,
            code="FORBIDDEN",
        )


def _pinned(if_match: str | None) -> int | None:
    try:
        return expected_version(if_match)
    except ValueError:
        raise bad_if_match(if_match or "") from None
