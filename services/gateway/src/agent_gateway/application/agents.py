"""Application: agents as HTTP callers manage them — visibility, owners, statuses.

A key bound to an owner lists only that owner's agents, creates agents for that
owner, and is told an agent of another owner does not exist (the same 404 as for a
missing one). It sees the versions and history of the agent's current lifecycle only:
a deleted id may have been registered again by someone else.

A create with an idempotency key names its agent by the caller and the key, so a retry
finds the agent registered (the registry's AGENT_ALREADY_EXISTS) and answers it, once
the registration it reads back — who made it, the spec and the initial status — is the
one this request would have made; another request with the key is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent_gateway.application.ports import AgentStore
from agent_gateway.domain.agents import (
    REGISTRATIONS,
    STATUSES,
    AgentChange,
    AgentRecord,
    idempotent_agent_id,
    same_spec,
)
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.runs import valid_idempotency_key
from agent_gateway.errors import agent_key_reused, agent_not_found, bad_field, forbidden
from agentrt_kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
)

T = TypeVar("T")
OWNER_ATTEMPTS = 3
HISTORY_PAGE = 1000  # the registry's largest page


@dataclass(frozen=True, slots=True)
class AgentQuery:
    """A page of the agent list."""

    template_id: str = ""
    active_only: bool = False
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class NewAgent:
    """A create request: the spec fields given, the id and the status as sent.

    `idempotency_key` (None: not sent) makes it safe to retry.
    """

    spec: Mapping[str, Any]
    agent_id: str = ""
    status: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Created:
    """The new agent and what its creator should review.

    `replayed`: an earlier request with the same idempotency key created it; `agent` is
    as it is now.
    """

    agent: AgentRecord
    warnings: list[str] = field(default_factory=list)
    replayed: bool = False


def initial_status(status: str | None) -> tuple[str | None, list[str]]:
    """The status an agent starts in, and a warning for a status old clients send.

    The old runtime accepted any string as a create's `status` and ignored it (its SDK
    sends `"draft"`); an agent status sets the initial status, anything else is
    ignored and reported.
    """
    if status is None or status in STATUSES:
        return status, []
    return None, [
        f"status {status[:64]!r} is not an agent status ({', '.join(STATUSES)}); "
        "it was ignored and the agent starts as 'created'"
    ]


class Agents:
    """Reads and changes agents on behalf of a caller."""

    def __init__(self, store: AgentStore) -> None:
        self._store = store

    async def visible(self, caller: Principal, agent_id: str) -> AgentRecord | None:
        """Refuse (404) an agent the caller's owner does not hold; free for unbound keys.

        Returns:
            The agent as it is now, for an owner-bound caller (None for others: not read).
        """
        if caller.owner is None:
            return None
        latest = await self._store.get(agent_id)
        if not caller.sees(latest.owner_id):
            raise agent_not_found(agent_id)
        return latest

    async def listing(self, caller: Principal, query: AgentQuery) -> list[AgentRecord]:
        """A page of the agents the caller may see, in the registry's order."""
        return await self._store.list_agents(
            template_id=query.template_id,
            active_only=query.active_only,
            limit=query.limit,
            offset=query.offset,
            owner_id=caller.owner or "",
        )

    async def get(self, caller: Principal, agent_id: str, version: int = 0) -> AgentRecord:
        """One agent, latest or as of `version`."""
        latest = await self.visible(caller, agent_id)
        if latest is not None and not version:
            return latest  # read once already
        agent = await self._store.get(agent_id, version)
        if latest is not None and agent.created_at != latest.created_at:
            raise agent_not_found(agent_id)  # a version of an earlier lifecycle
        return agent

    async def history(
        self, caller: Principal, agent_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[AgentChange], str]:
        """A page of the agent's recorded events, oldest first, and the next token."""
        latest = await self.visible(caller, agent_id)
        events, next_token = await self._store.history(
            agent_id, page_size=page_size, page_token=page_token
        )
        if latest is not None and latest.created_at is not None:
            since = latest.created_at
            events = [e for e in events if e.occurred_at is not None and e.occurred_at >= since]
        return events, next_token

    async def create(self, caller: Principal, request: NewAgent) -> Created:
        """Create an agent (the registry validates its template config).

        With an idempotency key and no id of its own, the agent's id is the one the
        caller's key names; a retry answers the agent the first request created.

        Raises:
            InvalidArgument: a bad idempotency key (naming `header.idempotency-key`);
                IDEMPOTENCY_KEY_REUSED, the key created an agent of another request.
            AlreadyExists: the name or id is taken (by another request than this one).
        """
        key = request.idempotency_key
        if key is not None and not valid_idempotency_key(key):
            raise bad_field(
                "header.idempotency-key",
                "must be 1-255 printable ASCII characters",
                "Idempotency-Key must be 1-255 printable ASCII characters",
            )
        spec = dict(request.spec)
        if caller.owner is not None:
            _own(caller, spec.get("owner_id"))
            spec["owner_id"] = caller.owner
        status, warnings = initial_status(request.status)
        agent_id = request.agent_id
        if key is not None and not agent_id:
            agent_id = idempotent_agent_id(caller.id, key)
        try:
            agent, found = await self._store.create(agent_id, spec, status)
        except AlreadyExists as e:
            if key is None or e.reason != "AGENT_ALREADY_EXISTS":
                raise
            agent = await self._replayed(caller, agent_id, spec, status or "created", e)
            return Created(agent, warnings, replayed=True)
        return Created(agent, [*warnings, *found])

    async def _replayed(
        self,
        caller: Principal,
        agent_id: str,
        spec: Mapping[str, Any],
        status: str,
        taken: AlreadyExists,
    ) -> AgentRecord:
        """The agent a keyed create made before, as it is now — if it made this one.

        Raises:
            AlreadyExists: `taken`, when another caller registered the id (a client-chosen
                id), or the agent was deleted since the registry refused the id.
            InvalidArgument: IDEMPOTENCY_KEY_REUSED, it was registered for another request.
        """
        try:
            latest = await self._store.get(agent_id)
        except NotFound:
            raise taken from None
        registration = await self._registration(agent_id, latest)
        if registration is None or registration.actor != caller.id:
            raise taken
        if registration.to_status != status or not same_spec(spec, registration.changes):
            raise agent_key_reused(agent_id)
        return latest

    async def _registration(self, agent_id: str, latest: AgentRecord) -> AgentChange | None:
        """The history event that started the agent's current lifecycle.

        Usually the agent's first event (one short read); after a deletion and a new
        registration of the id, a later one.
        """
        token, size = "", 1
        while True:
            events, token = await self._store.history(agent_id, page_size=size, page_token=token)
            for event in events:
                if event.type in REGISTRATIONS and event.occurred_at == latest.created_at:
                    return event
            if not token:
                return None
            size = HISTORY_PAGE

    async def update(
        self,
        caller: Principal,
        agent_id: str,
        changes: Mapping[str, Any],
        *,
        status: str | None = None,
        expected: int | None = None,
    ) -> AgentRecord:
        """Change the given fields; `status` may only repeat the current one.

        A `status` that is no agent status is ignored, as the old runtime ignored it (old
        clients send their create body, `"draft"` and all).
        """
        if caller.owner is not None:
            _own(caller, changes.get("owner_id"))

        async def write(latest: AgentRecord | None, pinned: int | None) -> AgentRecord:
            if status in STATUSES:
                _unchanged_status(latest or await self._store.get(agent_id), status)
            agent, _ = await self._store.update(agent_id, changes, pinned)
            return agent

        return await self._owned(caller, agent_id, expected, write)

    async def set_status(
        self, caller: Principal, agent_id: str, status: str, expected: int | None = None
    ) -> AgentRecord:
        """Move the agent to `status`."""

        async def write(latest: AgentRecord | None, pinned: int | None) -> AgentRecord:
            return await self._store.set_status(agent_id, status, pinned)

        return await self._owned(caller, agent_id, expected, write)

    async def delete(self, caller: Principal, agent_id: str, expected: int | None = None) -> None:
        """Delete the agent."""

        async def write(latest: AgentRecord | None, pinned: int | None) -> None:
            await self._store.delete(agent_id, pinned)

        await self._owned(caller, agent_id, expected, write)

    async def _owned(
        self,
        caller: Principal,
        agent_id: str,
        expected: int | None,
        write: Callable[[AgentRecord | None, int | None], Awaitable[T]],
    ) -> T:
        """Run a change, for an owner-bound caller only at the version it was allowed to see.

        Between reading the agent (its owner) and writing it, the agent could be deleted
        and registered again by another owner: the write is pinned to the version read,
        and read again when another change came first (`OWNER_ATTEMPTS` times at most).
        """
        if caller.owner is None:
            return await write(None, expected)
        for attempt in range(1, OWNER_ATTEMPTS + 1):
            latest = await self.visible(caller, agent_id)
            pinned = expected if expected is not None else latest.version if latest else None
            try:
                return await write(latest, pinned)
            except Aborted as e:
                mine = expected is None and e.reason == "VERSION_MISMATCH"
                if not mine or attempt == OWNER_ATTEMPTS:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")


def _unchanged_status(current: AgentRecord, status: str) -> None:
    """A PUT may repeat the current status, not change it (two writes could half-apply)."""
    if status != current.status:
        raise FailedPrecondition(
            "body.status: a PUT may repeat the current status but not change it; "
            "use PATCH /v1/agents/{id}/status",
            reason="STATUS_CHANGE_NEEDS_PATCH",
            violations=[FieldViolation("body.status", f"is {current.status!r}; use PATCH")],
        )


def _own(caller: Principal, owner_id: str | None) -> None:
    """An owner-bound key may only name its own owner."""
    if owner_id is not None and owner_id != caller.owner:
        raise forbidden(
            "this key may only manage agents of its own owner",
            field="body.owner_id",
            description="not this key's owner",
        )
