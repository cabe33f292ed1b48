"""Adapter: agents read from the agent registry over gRPC, cached until they change.

The latest version of each agent is cached; the registry's agent events on NATS
(`<prefix>.registry.agent.>`) drop an entry as soon as a newer version exists.
The cache is only trusted while the event subscription is live: while NATS is
down every lookup asks the registry, and after a reconnect (events may have
been missed) the cache starts empty. Concurrent lookups of one agent share one
call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import grpc
from nats.aio.msg import Msg

from agent_executor.domain.agents import AgentSnapshot
from agent_executor.errors import AgentNotFound, RegistryUnavailable
from agentrt.events.v1 import registry_events_pb2
from agentrt.registry.v1 import registry_pb2, registry_pb2_grpc
from agentrt_kit.errors import AgentrtError, NotFound
from agentrt_kit.grpc.client import create_channel, retry_service_config
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import struct_to_dict
from agentrt_kit.nats import BackgroundSubscription, Names, NatsClient

log = logging.getLogger(__name__)

REGISTRY_SERVICE = "agentrt.registry.v1.AgentRegistry"


def snapshot(agent: registry_pb2.Agent) -> AgentSnapshot:
    """The executor's view of a registry agent."""
    spec = agent.spec
    status = registry_pb2.AgentStatus.Name(agent.status).removeprefix("AGENT_STATUS_").lower()
    return AgentSnapshot(
        id=agent.id,
        version=agent.version,
        status=status,
        name=spec.name,
        template_id=spec.template_id,
        template_version=spec.template_version_id,
        template_config=struct_to_dict(spec.template_config),
        system_prompt=spec.system_prompt,
        conversation_config=struct_to_dict(spec.conversation_config),
        toolsets=tuple(spec.toolsets),
        llm_config_id=spec.llm_config_id,
        owner_id=spec.owner_id,
    )


class RegistryAgents:
    """The `AgentSource` port over the registry, with an event-invalidated cache."""

    def __init__(
        self,
        target: str,
        client: NatsClient,
        names: Names,
        *,
        service_token: str | None = None,
        timeout: float = 5.0,
        cache_size: int = 10_000,
    ) -> None:
        self._channel = create_channel(
            target,
            service_token=service_token,
            default_timeout=timeout,
            service_config=retry_service_config(REGISTRY_SERVICE, ["GetAgent"]),
        )
        self._stub = registry_pb2_grpc.AgentRegistryStub(self._channel)
        self._client = client
        self._subject = names.subject("registry", "agent", ">")
        self._cache: OrderedDict[str, AgentSnapshot] = OrderedDict()
        self._newest: OrderedDict[str, int] = OrderedDict()  # versions seen in events
        self._cache_size = cache_size
        self._inflight: dict[str, asyncio.Task[AgentSnapshot]] = {}
        self._events = BackgroundSubscription(
            client, self._subject, self._on_event, what="agent-events"
        )
        self._connection: tuple[int, int] = (0, -1)  # (id of connection, reconnects)
        self.fetches = 0

    async def start(self) -> None:
        """Subscribe to agent events in the background."""
        self._events.start()

    async def close(self) -> None:
        """Stop listening and close the channel."""
        await self._events.close()
        await self._channel.close()

    def _trusted(self) -> bool:
        """Whether the cache can be used now; forgets it after a reconnect."""
        nc = self._client.nc
        if not self._events.active or not nc.is_connected:
            return False
        connection = (id(nc), int(nc.stats.get("reconnects", 0)))
        if connection != self._connection:
            self._cache.clear()  # events may have been missed meanwhile
            self._connection = connection
        return True

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = registry_events_pb2.AgentChanged.FromString(msg.data)
        except Exception:
            log.warning("malformed agent event ignored", extra={"subject": msg.subject})
            return
        self._newest[event.agent_id] = max(event.version, self._newest.get(event.agent_id, 0))
        self._newest.move_to_end(event.agent_id)
        while len(self._newest) > self._cache_size:
            self._newest.popitem(last=False)
        cached = self._cache.get(event.agent_id)
        if cached is not None and cached.version < event.version:
            del self._cache[event.agent_id]

    async def get(self, agent_id: str, min_version: int = 0) -> AgentSnapshot:
        """The agent's latest version (from the cache while it is trusted).

        A cached version older than `min_version` (a write the caller has seen whose
        event has not arrived yet) is not trusted: the registry is asked.
        """
        trusted = self._trusted()
        cached = self._cache.get(agent_id) if trusted else None
        if cached is not None and cached.version >= min_version:
            self._cache.move_to_end(agent_id)
            return cached
        pending = self._inflight.get(agent_id)
        if pending is None:
            # The call runs in a task of its own: a caller hanging up does not cancel
            # the lookup the other callers of the same agent are waiting for.
            pending = asyncio.create_task(self._fetch_and_cache(agent_id, trusted))
            self._inflight[agent_id] = pending
            pending.add_done_callback(lambda task: self._forget(agent_id, task))
        return await asyncio.shield(pending)

    def _forget(self, agent_id: str, task: asyncio.Task[AgentSnapshot]) -> None:
        self._inflight.pop(agent_id, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter re-raises it itself

    async def _fetch_and_cache(self, agent_id: str, trusted: bool) -> AgentSnapshot:
        agent = await self._fetch(agent_id)
        if trusted and agent.version >= self._newest.get(agent_id, 0):
            self._cache[agent_id] = agent
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return agent

    async def _fetch(self, agent_id: str) -> AgentSnapshot:
        self.fetches += 1
        try:
            reply = await self._stub.GetAgent(registry_pb2.GetAgentRequest(agent_id=agent_id))
        except grpc.aio.AioRpcError as e:
            error: AgentrtError = error_from_rpc(e)
            if isinstance(error, NotFound):
                raise AgentNotFound(agent_id) from None
            if error.code.value in {"INVALID_ARGUMENT"}:
                raise AgentNotFound(agent_id) from None  # not an id the registry could hold
            raise RegistryUnavailable(f"agent registry: {error.message}") from None
        return snapshot(reply.agent)
