"""Adapter: agents read from the agent registry over gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_gateway.adapters.grpc_calls import answer, time_of
from agent_gateway.domain.agents import AgentChange, AgentRecord
from agentrt.registry.v1 import registry_pb2, registry_pb2_grpc
from agentrt_kit.grpc.client import create_channel, retry_service_config
from agentrt_kit.grpc.structs import fill, struct_to_dict

REGISTRY_SERVICE = "agentrt.registry.v1.AgentRegistry"
PAGE = 1000  # the registry's largest page


def record(agent: registry_pb2.Agent) -> AgentRecord:
    """The gateway's view of a registry agent."""
    spec = agent.spec
    return AgentRecord(
        id=agent.id,
        version=agent.version,
        name=spec.name,
        template_id=spec.template_id,
        template_version=spec.template_version_id,
        status=_status_name(agent.status),
        system_prompt=spec.system_prompt,
        llm_config_id=spec.llm_config_id,
        owner_id=spec.owner_id,
        conversation_config=struct_to_dict(spec.conversation_config),
        toolsets=tuple(spec.toolsets),
        template_config=struct_to_dict(spec.template_config),
        metadata=struct_to_dict(spec.metadata),
        created_at=time_of(agent, "created_at"),
        updated_at=time_of(agent, "updated_at"),
    )


def _status_name(value: int) -> str:
    """`AGENT_STATUS_ACTIVE` → `active`."""
    return registry_pb2.AgentStatus.Name(value).removeprefix("AGENT_STATUS_").lower()  # type: ignore[arg-type]


def _status(value: int) -> str | None:
    return None if value == registry_pb2.AGENT_STATUS_UNSPECIFIED else _status_name(value)


def _change(event: registry_pb2.AgentEvent) -> AgentChange:
    return AgentChange(
        version=event.version,
        type=event.type,
        occurred_at=time_of(event, "occurred_at"),
        actor=event.actor,
        request_id=event.request_id,
        changed_fields=tuple(event.changed_fields),
        changes=struct_to_dict(event.changes),
        from_status=_status(event.from_status),
        to_status=_status(event.to_status),
        reason=event.reason,
    )


STATUS_OF = {
    "created": registry_pb2.AGENT_STATUS_CREATED,
    "active": registry_pb2.AGENT_STATUS_ACTIVE,
    "inactive": registry_pb2.AGENT_STATUS_INACTIVE,
    "error": registry_pb2.AGENT_STATUS_ERROR,
}


class RegistryAgents:
    """Agents in the registry (the `AgentStore` port); refusals are kit errors."""

    def __init__(self, target: str, *, service_token: str | None, timeout: float) -> None:
        self._channel = create_channel(
            target,
            service_token=service_token,
            default_timeout=timeout,
            service_config=retry_service_config(REGISTRY_SERVICE, ["GetAgent", "ListAgents"]),
        )
        self._stub = registry_pb2_grpc.AgentRegistryStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def get(self, agent_id: str, version: int = 0) -> AgentRecord:
        """One agent, latest or as of `version`.

        Raises:
            AgentrtError: NotFound (AGENT_NOT_FOUND), or the registry's refusal.
        """
        reply = await answer(
            self._stub.GetAgent(registry_pb2.GetAgentRequest(agent_id=agent_id, version=version))
        )
        return record(reply.agent)

    async def history(
        self, agent_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[AgentChange], str]:
        """One page of the agent's recorded events, oldest first, and the next page's token.

        Raises:
            AgentrtError: NotFound (AGENT_NOT_FOUND), or the registry's refusal.
        """
        reply = await answer(
            self._stub.ListAgentEvents(
                registry_pb2.ListAgentEventsRequest(
                    agent_id=agent_id, page_size=page_size, page_token=page_token
                )
            )
        )
        return [_change(e) for e in reply.events], reply.next_page_token

    async def list_agents(
        self, *, template_id: str, active_only: bool, limit: int, offset: int, owner_id: str = ""
    ) -> list[AgentRecord]:
        """Agents in the registry's order, `offset` skipped, at most `limit`.

        Raises:
            AgentrtError: the registry's refusal.
        """
        request = registry_pb2.ListAgentsRequest(
            template_id=template_id,
            owner_id=owner_id,
            status=(
                registry_pb2.AGENT_STATUS_ACTIVE
                if active_only
                else registry_pb2.AGENT_STATUS_UNSPECIFIED
            ),
            page_size=min(PAGE, offset + limit),  # no more than the answer needs
        )
        found: list[AgentRecord] = []
        skip = offset
        while True:
            reply = await answer(self._stub.ListAgents(request))
            agents = list(reply.agents)
            taken = agents[skip:]
            skip = max(0, skip - len(agents))
            found.extend(record(a) for a in taken[: limit - len(found)])
            if len(found) >= limit or not reply.next_page_token:
                return found
            request.page_token = reply.next_page_token

    async def create(
        self, agent_id: str, spec: Mapping[str, Any], status: str | None
    ) -> tuple[AgentRecord, list[str]]:
        """A new agent and the registry's warnings."""
        request = registry_pb2.CreateAgentRequest(
            agent_id=agent_id,
            spec=_spec(spec),
            status=STATUS_OF[status] if status else registry_pb2.AGENT_STATUS_UNSPECIFIED,
        )
        reply = await answer(self._stub.CreateAgent(request))
        return record(reply.agent), list(reply.warnings)

    async def update(
        self, agent_id: str, changes: Mapping[str, Any], expected: int | None
    ) -> tuple[AgentRecord, list[str]]:
        """The agent with `changes` (AgentSpec field names) applied, and warnings."""
        request = registry_pb2.UpdateAgentRequest(agent_id=agent_id, spec=_spec(changes))
        request.update_mask.paths.extend(sorted(changes))
        if expected is not None:
            request.expected_version = expected
        reply = await answer(self._stub.UpdateAgent(request))
        return record(reply.agent), list(reply.warnings)

    async def set_status(self, agent_id: str, status: str, expected: int | None) -> AgentRecord:
        """The agent with its new status."""
        request = registry_pb2.SetAgentStatusRequest(agent_id=agent_id, status=STATUS_OF[status])
        if expected is not None:
            request.expected_version = expected
        reply = await answer(self._stub.SetAgentStatus(request))
        return record(reply.agent)

    async def delete(self, agent_id: str, expected: int | None) -> None:
        """Delete the agent."""
        request = registry_pb2.DeleteAgentRequest(agent_id=agent_id)
        if expected is not None:
            request.expected_version = expected
        await answer(self._stub.DeleteAgent(request))


def _spec(values: Mapping[str, Any]) -> registry_pb2.AgentSpec:
    return fill(registry_pb2.AgentSpec(), values)
