"""Adapter: the `agentrt.registry.v1.AgentRegistry` gRPC servicer.

Each handler translates: proto → plain arguments → one application call (in the
blocking-call pool, since the eventsourcing library is synchronous) → proto.
Errors raised by the application reach the caller through the kit's error
interceptor as rich statuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from agent_registry.application.listing import AgentListing
from agent_registry.application.ports import ListFilter
from agent_registry.application.records import AgentState
from agent_registry.application.registry import AgentRegistry
from agent_registry.domain.agent import CommandContext, HistoryEntry
from agent_registry.domain.spec import LIST_FIELDS, OBJECT_FIELDS, SPEC_FIELDS
from agent_registry.domain.status import Status
from agent_registry.errors import InvalidAgent
from agentrt.registry.v1 import registry_pb2, registry_pb2_grpc
from agentrt_kit.concurrency import BlockingRunner
from agentrt_kit.context import current_actor, current_request_id, new_request_id
from agentrt_kit.errors import FieldViolation, invalid
from agentrt_kit.grpc.structs import dict_to_struct, struct_to_dict

STATUS_TO_PROTO: dict[Status, registry_pb2.AgentStatus.ValueType] = {
    Status.CREATED: registry_pb2.AGENT_STATUS_CREATED,
    Status.ACTIVE: registry_pb2.AGENT_STATUS_ACTIVE,
    Status.INACTIVE: registry_pb2.AGENT_STATUS_INACTIVE,
    Status.ERROR: registry_pb2.AGENT_STATUS_ERROR,
}
PROTO_TO_STATUS: dict[int, Status] = {int(v): k for k, v in STATUS_TO_PROTO.items()}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp (exact to the microsecond).

    Integer timedelta arithmetic: a third of the cost of Timestamp.FromDatetime,
    which a list page pays a hundred times.
    """
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def spec_values(spec: registry_pb2.AgentSpec, fields: Iterable[str]) -> dict[str, Any]:
    """The named fields of a proto spec as plain values."""
    out: dict[str, Any] = {}
    for field in fields:
        value = getattr(spec, field)
        if field in OBJECT_FIELDS:
            out[field] = struct_to_dict(value)
        elif field in LIST_FIELDS:
            out[field] = list(value)
        else:
            out[field] = value
    return out


def spec_to_proto(spec: dict[str, Any]) -> registry_pb2.AgentSpec:
    """A plain spec as a proto spec."""
    kwargs: dict[str, Any] = {}
    for field in SPEC_FIELDS:
        value = spec.get(field)
        if field in OBJECT_FIELDS:
            kwargs[field] = dict_to_struct(value or {})
        elif field in LIST_FIELDS:
            kwargs[field] = list(value or [])
        else:
            kwargs[field] = value or ""
    return registry_pb2.AgentSpec(**kwargs)


def update_fields(request: registry_pb2.UpdateAgentRequest) -> list[str]:
    """The spec fields an update names: its mask, or every populated field."""
    paths = list(request.update_mask.paths)
    if paths:
        bad = [
            FieldViolation(f"update_mask.paths[{i}]", f"{p!r} is not an agent field")
            for i, p in enumerate(paths)
            if p not in SPEC_FIELDS
        ]
        if bad:
            raise InvalidAgent(bad)
        return list(dict.fromkeys(paths))
    spec = request.spec
    return [
        f
        for f in SPEC_FIELDS
        if (spec.HasField(f) if f in OBJECT_FIELDS else bool(getattr(spec, f)))  # type: ignore[arg-type]
    ]


def proto_status(status: str) -> registry_pb2.AgentStatus.ValueType:
    """The proto enum of a status name ("" → UNSPECIFIED)."""
    return STATUS_TO_PROTO[Status(status)] if status else registry_pb2.AGENT_STATUS_UNSPECIFIED


def status_from_proto(value: int, field: str = "status") -> Status:
    """The domain status of a proto enum value."""
    try:
        return PROTO_TO_STATUS[value]
    except KeyError:
        raise invalid(field, "must be created, active, inactive or error") from None


def agent_to_proto(state: AgentState) -> registry_pb2.Agent:
    """The proto of an agent state."""
    return registry_pb2.Agent(
        id=state.agent_id,
        version=state.version,
        spec=spec_to_proto(state.spec),
        status=STATUS_TO_PROTO[Status(state.status)],
        created_at=timestamp(state.created_at),
        updated_at=timestamp(state.updated_at),
        created_by=state.created_by,
        updated_by=state.updated_by,
    )


def entry_fields(entry: HistoryEntry) -> dict[str, Any]:
    """The proto fields a history entry fills, shared by AgentEvent and AgentChanged."""
    return {
        "version": entry.version,
        "type": entry.type,
        "occurred_at": timestamp(entry.occurred_at),
        "actor": entry.actor,
        "request_id": entry.request_id,
        "changed_fields": list(entry.changed_fields),
        "changes": dict_to_struct(entry.changes),
        "from_status": proto_status(entry.from_status),
        "to_status": proto_status(entry.to_status),
        "reason": entry.reason,
    }


def event_to_proto(entry: HistoryEntry) -> registry_pb2.AgentEvent:
    """The proto of a history entry."""
    return registry_pb2.AgentEvent(**entry_fields(entry))


def command_context() -> CommandContext:
    """Who is acting in the current call (set by the context interceptor)."""
    return CommandContext(
        actor=current_actor() or "anonymous", request_id=current_request_id() or new_request_id()
    )


def expected(request: Any) -> int | None:
    """The request's expected_version, or None when unset."""
    return int(request.expected_version) if request.HasField("expected_version") else None


class AgentRegistryServicer(registry_pb2_grpc.AgentRegistryServicer):
    """gRPC face of the registry application and its listing."""

    def __init__(
        self,
        app: AgentRegistry,
        listing: AgentListing,
        run_blocking: BlockingRunner,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.listing = listing
        self.run = run_blocking
        self.on_change = on_change

    async def CreateAgent(
        self, request: registry_pb2.CreateAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.CreateAgentResponse:
        """Register an agent."""
        status = None
        if request.status != registry_pb2.AGENT_STATUS_UNSPECIFIED:
            status = status_from_proto(request.status)
        state, warnings = await self.run(
            self.app.create_agent,
            request.agent_id,
            spec_values(request.spec, SPEC_FIELDS),
            status,
            command_context(),
        )
        self.on_change()
        return registry_pb2.CreateAgentResponse(agent=agent_to_proto(state), warnings=warnings)

    async def GetAgent(
        self, request: registry_pb2.GetAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetAgentResponse:
        """Read an agent, latest or at a version."""
        state = await self.run(self.app.get_agent, request.agent_id, request.version or None)
        return registry_pb2.GetAgentResponse(agent=agent_to_proto(state))

    async def ListAgents(
        self, request: registry_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListAgentsResponse:
        """List live agents."""
        status = ""
        if request.status != registry_pb2.AGENT_STATUS_UNSPECIFIED:
            status = status_from_proto(request.status).value
        where = ListFilter(
            template_id=request.template_id, status=status, owner_id=request.owner_id
        )
        states, token = await self.run(
            self.listing.list, where, request.page_size, request.page_token, request.allow_stale
        )
        return registry_pb2.ListAgentsResponse(
            agents=[agent_to_proto(s) for s in states], next_page_token=token
        )

    async def UpdateAgent(
        self, request: registry_pb2.UpdateAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.UpdateAgentResponse:
        """Partially update an agent."""
        values = spec_values(request.spec, update_fields(request))
        state, warnings = await self.run(
            self.app.update_agent, request.agent_id, values, expected(request), command_context()
        )
        self.on_change()
        return registry_pb2.UpdateAgentResponse(agent=agent_to_proto(state), warnings=warnings)

    async def SetAgentStatus(
        self, request: registry_pb2.SetAgentStatusRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.SetAgentStatusResponse:
        """Move an agent along its lifecycle."""
        status = status_from_proto(request.status)
        state = await self.run(
            self.app.set_status,
            request.agent_id,
            status,
            request.reason,
            expected(request),
            command_context(),
        )
        self.on_change()
        return registry_pb2.SetAgentStatusResponse(agent=agent_to_proto(state))

    async def DeleteAgent(
        self, request: registry_pb2.DeleteAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteAgentResponse:
        """Delete an agent."""
        version = await self.run(
            self.app.delete_agent, request.agent_id, expected(request), command_context()
        )
        self.on_change()
        return registry_pb2.DeleteAgentResponse(agent_id=request.agent_id, version=version)

    async def ListAgentEvents(
        self, request: registry_pb2.ListAgentEventsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListAgentEventsResponse:
        """Read an agent's history."""
        entries, token = await self.run(
            self.app.list_events, request.agent_id, request.page_size, request.page_token
        )
        return registry_pb2.ListAgentEventsResponse(
            events=[event_to_proto(e) for e in entries], next_page_token=token
        )
