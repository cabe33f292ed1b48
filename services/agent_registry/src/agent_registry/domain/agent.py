"""Domain: the Agent aggregate, the AgentName index aggregate, and their events.

An agent's lifecycle is its event stream: registered (or re-registered after a
deletion), configuration changed, status changed, deleted. Every event records
the acting principal and the request id. The aggregate version is the agent
version that runs pin (`agent_id@version`).

Uniqueness is enforced by the event store itself: an agent's aggregate id is
derived from its client id, and each name has an `AgentName` aggregate whose id
is derived from the name's unique form. Creating either writes version 1 (or
the next version of a released one), so two racing writers conflict inside the
store's transaction and exactly one wins.

Persistent names: event topics are stored, so this module's path and these
class names must not change.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from agent_registry.domain.spec import complete, name_key
from agent_registry.domain.status import Status, can_transition
from agent_registry.errors import AgentAlreadyExists, AgentNotFound, IllegalStatusTransition

NAMESPACE = uuid.UUID("6a1f6c1e-0f7e-4d0b-9a57-2f6a3c1d9b10")


def agent_uuid(agent_id: str) -> uuid.UUID:
    """The aggregate id of the agent with client id `agent_id`."""
    return uuid.uuid5(NAMESPACE, f"agent:{agent_id}")


def name_uuid(name: str) -> uuid.UUID:
    """The aggregate id of the index entry for `name` (case- and width-insensitive)."""
    return uuid.uuid5(NAMESPACE, f"agent-name:{name_key(name)}")


@dataclass(frozen=True)
class CommandContext:
    """Who asks for a change, and in which request."""

    actor: str
    request_id: str


class Agent(Aggregate):
    """An agent: its configuration (spec), status and lifecycle."""

    def __init__(self) -> None:
        # The state is set by the events' apply methods (see `begin`).
        self.agent_id = ""
        self.spec: dict[str, Any] = {}
        self.status = Status.CREATED.value
        self.deleted = False
        self.registered_at: datetime | None = None
        self.created_by = ""
        self.updated_by = ""

    class Event(Aggregate.Event):
        """Base of agent events: which agent, who acted, in which request."""

        agent_id: str
        actor: str
        request_id: str

    class Registered(Event, Aggregate.Created):
        """The agent was created with a full spec and an initial status."""

        spec: dict[str, Any]
        status: str

        def apply(self, agent: Any) -> None:
            """Start the agent's state."""
            begin(agent, self)

    class Reregistered(Event):
        """A deleted agent's id was registered again: a new lifecycle, same stream."""

        spec: dict[str, Any]
        status: str

        def apply(self, agent: Any) -> None:
            """Restart the agent's state."""
            begin(agent, self)

    class ConfigurationChanged(Event):
        """Some spec fields got new values (only the changed ones are recorded)."""

        changes: dict[str, Any]

        def apply(self, agent: Any) -> None:
            """Set the changed fields."""
            agent.spec = {**agent.spec, **self.changes}
            agent.updated_by = self.actor

    class StatusChanged(Event):
        """The agent moved along its status lifecycle."""

        from_status: str
        to_status: str
        reason: str

        def apply(self, agent: Any) -> None:
            """Set the new status."""
            agent.status = self.to_status
            agent.updated_by = self.actor

    class Deleted(Event):
        """The agent was deleted; its history stays and its name is freed."""

        def apply(self, agent: Any) -> None:
            """Mark the agent deleted."""
            agent.deleted = True
            agent.updated_by = self.actor

    @classmethod
    def register(
        cls, agent_id: str, spec: Mapping[str, Any], status: Status, ctx: CommandContext
    ) -> Agent:
        """A new agent with a complete `spec`."""
        return cls._create(
            cls.Registered,
            id=agent_uuid(agent_id),
            agent_id=agent_id,
            spec=dict(spec),
            status=status.value,
            actor=ctx.actor,
            request_id=ctx.request_id,
        )

    def reregister(self, spec: Mapping[str, Any], status: Status, ctx: CommandContext) -> None:
        """Start a new lifecycle for this id; only a deleted agent can be re-registered."""
        if not self.deleted:
            raise AgentAlreadyExists(self.agent_id)
        self.trigger_event(
            self.Reregistered,
            agent_id=self.agent_id,
            spec=dict(spec),
            status=status.value,
            actor=ctx.actor,
            request_id=ctx.request_id,
        )

    def change_configuration(self, values: Mapping[str, Any], ctx: CommandContext) -> list[str]:
        """Record the fields whose value differs; returns their names (none: no event)."""
        self._require_live()
        changes = {k: v for k, v in values.items() if self.spec.get(k) != v}
        if changes:
            self.trigger_event(
                self.ConfigurationChanged,
                agent_id=self.agent_id,
                changes=changes,
                actor=ctx.actor,
                request_id=ctx.request_id,
            )
        return sorted(changes)

    def change_status(self, to: Status, reason: str, ctx: CommandContext) -> bool:
        """Move to status `to`; False (no event) when already there.

        Raises:
            IllegalStatusTransition: when the lifecycle forbids the move.
        """
        self._require_live()
        current = Status(self.status)
        if current == to:
            return False
        if not can_transition(current, to):
            raise IllegalStatusTransition(self.agent_id, current.value, to.value)
        self.trigger_event(
            self.StatusChanged,
            agent_id=self.agent_id,
            from_status=current.value,
            to_status=to.value,
            reason=reason,
            actor=ctx.actor,
            request_id=ctx.request_id,
        )
        return True

    def delete(self, ctx: CommandContext) -> None:
        """Delete the agent."""
        self._require_live()
        self.trigger_event(
            self.Deleted, agent_id=self.agent_id, actor=ctx.actor, request_id=ctx.request_id
        )

    def _require_live(self) -> None:
        if self.deleted:
            raise AgentNotFound(self.agent_id)


def begin(agent: Any, event: Agent.Registered | Agent.Reregistered) -> None:
    """Set the state an agent has right after (re-)registration.

    Used by the aggregate and by the listing projection, which evolves plain
    records with the same event `apply` methods.
    """
    agent.agent_id = event.agent_id
    agent.spec = complete(event.spec)
    agent.status = event.status
    agent.deleted = False
    agent.registered_at = event.timestamp
    agent.created_by = event.actor
    agent.updated_by = event.actor


class AgentName(Aggregate):
    """Index entry for one agent name: which live agent holds it, if any."""

    def __init__(self) -> None:
        # Set by the events' apply methods.
        self.name = ""
        self.holder: str | None = None

    class Claimed(Aggregate.Created):
        """The name was taken for the first time."""

        name: str
        agent_id: str

        def apply(self, index: Any) -> None:
            """Record the holder."""
            index.name = self.name
            index.holder = self.agent_id

    class Reclaimed(Aggregate.Event):
        """A released name was taken again."""

        name: str
        agent_id: str

        def apply(self, index: Any) -> None:
            """Record the new holder."""
            index.name = self.name
            index.holder = self.agent_id

    class Released(Aggregate.Event):
        """The holder was renamed or deleted; the name is free."""

        agent_id: str

        def apply(self, index: Any) -> None:
            """Clear the holder."""
            index.holder = None

    @classmethod
    def claim_new(cls, name: str, agent_id: str) -> AgentName:
        """The first claim of `name`."""
        return cls._create(cls.Claimed, id=name_uuid(name), name=name, agent_id=agent_id)

    def reclaim(self, name: str, agent_id: str) -> None:
        """Take a released name."""
        self.trigger_event(self.Reclaimed, name=name, agent_id=agent_id)

    def release(self, agent_id: str) -> None:
        """Free the name (only its holder can)."""
        if self.holder == agent_id:
            self.trigger_event(self.Released, agent_id=agent_id)


@dataclass(frozen=True)
class HistoryEntry:
    """What one agent event says, in the terms clients read (history and integration events)."""

    agent_id: str
    version: int
    type: str
    occurred_at: datetime
    actor: str
    request_id: str
    changed_fields: tuple[str, ...]
    changes: dict[str, Any]
    from_status: str = ""
    to_status: str = ""
    reason: str = ""


EVENT_TYPES: dict[type[Agent.Event], str] = {
    Agent.Registered: "registered",
    Agent.Reregistered: "reregistered",
    Agent.ConfigurationChanged: "configuration_changed",
    Agent.StatusChanged: "status_changed",
    Agent.Deleted: "deleted",
}


AGENT_EVENT_TOPICS = frozenset(get_topic(cls) for cls in EVENT_TYPES)
"""Stored topics of agent events: lets readers of the notification log skip index events
without decoding them."""


def describe(event: Agent.Event) -> HistoryEntry:
    """The history entry of an agent event."""
    changes: dict[str, Any] = {}
    from_status = to_status = reason = ""
    if isinstance(event, Agent.Registered | Agent.Reregistered):
        changes = dict(event.spec)
        to_status = event.status
    elif isinstance(event, Agent.ConfigurationChanged):
        changes = dict(event.changes)
    elif isinstance(event, Agent.StatusChanged):
        from_status, to_status, reason = event.from_status, event.to_status, event.reason
    return HistoryEntry(
        agent_id=event.agent_id,
        version=event.originator_version,
        type=EVENT_TYPES[type(event)],
        occurred_at=event.timestamp,
        actor=event.actor,
        request_id=event.request_id,
        changed_fields=tuple(sorted(changes)),
        changes=changes,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
    )
