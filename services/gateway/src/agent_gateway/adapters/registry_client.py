"""Adapter: agents read from the agent registry over gRPC."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from agent_gateway.domain.agents import AgentRecord
from agent_gateway.domain.errors import ApiError, from_service
from agentrt.registry.v1 import registry_pb2, registry_pb2_grpc
from agentrt_kit.grpc.client import create_channel, retry_service_config
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import struct_to_dict

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
        status=registry_pb2.AgentStatus.Name(agent.status).removeprefix("AGENT_STATUS_").lower(),
        system_prompt=spec.system_prompt,
        llm_config_id=spec.llm_config_id,
        conversation_config=struct_to_dict(spec.conversation_config),
        toolsets=tuple(spec.toolsets),
        template_config=struct_to_dict(spec.template_config),
        metadata=struct_to_dict(spec.metadata),
        created_at=_time(agent.created_at) if agent.HasField("created_at") else None,
        updated_at=_time(agent.updated_at) if agent.HasField("updated_at") else None,
    )


def _time(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


class RegistryAgents:
    """Reads agents; refusals come back as the HTTP API's errors."""

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
            ApiError: 404 AGENT_NOT_FOUND, or the registry's refusal.
        """
        try:
            reply = await self._stub.GetAgent(
                registry_pb2.GetAgentRequest(agent_id=agent_id, version=version)
            )
        except grpc.aio.AioRpcError as e:
            raise _refusal(e) from None
        return record(reply.agent)

    async def list(
        self, *, template_id: str, active_only: bool, limit: int, offset: int
    ) -> list[AgentRecord]:
        """Agents in the registry's order, `offset` skipped, at most `limit`.

        Raises:
            ApiError: the registry's refusal.
        """
        request = registry_pb2.ListAgentsRequest(
            template_id=template_id,
            status=(
                registry_pb2.AGENT_STATUS_ACTIVE
                if active_only
                else registry_pb2.AGENT_STATUS_UNSPECIFIED
            ),
            page_size=PAGE,
        )
        found: list[AgentRecord] = []
        skip = offset
        while True:
            try:
                reply = await self._stub.ListAgents(request)
            except grpc.aio.AioRpcError as e:
                raise _refusal(e) from None
            agents = list(reply.agents)
            taken = agents[skip:]
            skip = max(0, skip - len(agents))
            found.extend(record(a) for a in taken[: limit - len(found)])
            if len(found) >= limit or not reply.next_page_token:
                return found
            request.page_token = reply.next_page_token


def _refusal(error: grpc.aio.AioRpcError) -> ApiError:
    return from_service(error_from_rpc(error), not_found="AGENT_NOT_FOUND")
