"""Application: agents as OpenAI "models" — what `client.models.list()` shows a caller.

Every agent the caller may run is a model whose id is the agent id (what
`/v1/chat/completions` takes as `model`): the agents in a runnable status (`created`,
`active`), and for an owner-bound key only its owner's — the first `MAX_MODELS` of
them in the registry's order (OpenAI's list is not paged).
"""

from __future__ import annotations

from agent_gateway.application.agents import AgentQuery, Agents
from agent_gateway.domain.agents import RUNNABLE, AgentRecord
from agent_gateway.domain.auth import Principal
from agent_gateway.errors import agent_not_found

MAX_MODELS = 10_000  # OpenAI's model list has no paging: the first this many agents


class Models:
    """The agents a caller may run, as models."""

    def __init__(self, agents: Agents) -> None:
        self._agents = agents

    async def runnable(self, caller: Principal) -> list[AgentRecord]:
        """Every runnable agent the caller may see, in the registry's order."""
        every = await self._agents.listing(caller, AgentQuery(limit=MAX_MODELS))
        return [a for a in every if a.status in RUNNABLE]

    async def get(self, caller: Principal, model: str) -> AgentRecord:
        """One model: a runnable agent the caller may see (404 otherwise)."""
        agent = await self._agents.get(caller, model)
        if agent.status not in RUNNABLE:
            raise agent_not_found(model)
        return agent
