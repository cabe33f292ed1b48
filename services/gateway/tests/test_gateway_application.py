"""The gateway's use cases over an in-memory agent store (the `AgentStore` port's twin)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from agent_gateway.application.agents import Agents, NewAgent, initial_status
from agent_gateway.domain.agents import AgentRecord
from agent_gateway.domain.auth import Principal
from agentrt_kit.errors import Aborted, NotFound


class MemoryAgents:
    """Agents in a dict, with the registry's version checks; `before_write` runs first."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentRecord] = {}
        self.before_write: Any = None

    async def get(self, agent_id: str, version: int = 0) -> AgentRecord:
        if agent_id not in self.agents:
            raise NotFound(agent_id, reason="AGENT_NOT_FOUND")
        return self.agents[agent_id]

    async def history(self, agent_id: str, *, page_size: int, page_token: str) -> Any:
        return [], ""

    async def list_agents(self, **query: Any) -> list[AgentRecord]:
        return list(self.agents.values())

    async def create(
        self, agent_id: str, spec: Mapping[str, Any], status: str | None
    ) -> tuple[AgentRecord, list[str]]:
        agent = record(agent_id, spec.get("owner_id", ""), status=status or "created")
        self.agents[agent_id] = agent
        return agent, []

    def _write(self, agent_id: str, expected: int | None, **changes: Any) -> AgentRecord:
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        current = self.agents[agent_id]
        if expected is not None and expected != current.version:
            raise Aborted("stale", reason="VERSION_MISMATCH")
        changed = dataclasses.replace(current, version=current.version + 1, **changes)
        self.agents[agent_id] = changed
        return changed

    async def update(
        self, agent_id: str, changes: Mapping[str, Any], expected: int | None
    ) -> tuple[AgentRecord, list[str]]:
        return self._write(agent_id, expected, name=changes.get("name", "")), []

    async def set_status(self, agent_id: str, status: str, expected: int | None) -> AgentRecord:
        return self._write(agent_id, expected, status=status)

    async def delete(self, agent_id: str, expected: int | None) -> None:
        self._write(agent_id, expected)
        del self.agents[agent_id]


def record(agent_id: str, owner: str, *, version: int = 1, status: str = "active") -> AgentRecord:
    return AgentRecord(
        id=agent_id,
        version=version,
        name=agent_id,
        template_id="simple-test",
        template_version="",
        status=status,
        system_prompt="",
        llm_config_id="",
        owner_id=owner,
    )


ACME = Principal("acme-key", "admin", "acme")


@pytest.mark.parametrize("change", ["update", "set_status", "delete"])
async def test_an_owner_never_changes_an_agent_another_owner_registered_meanwhile(
    change: str,
) -> None:
    store = MemoryAgents()
    store.agents["a1"] = record("a1", "acme")
    # Between acme's read and its write, the id is deleted and registered by globex.
    store.before_write = lambda: store.agents.__setitem__("a1", record("a1", "globex", version=2))
    agents = Agents(store)
    writes = {
        "update": lambda: agents.update(ACME, "a1", {"name": "mine"}),
        "set_status": lambda: agents.set_status(ACME, "a1", "inactive"),
        "delete": lambda: agents.delete(ACME, "a1"),
    }
    with pytest.raises(NotFound):
        await writes[change]()
    assert store.agents["a1"] == record("a1", "globex", version=2)


async def test_an_owner_write_retries_after_a_change_of_its_own_owner() -> None:
    store = MemoryAgents()
    store.agents["a1"] = record("a1", "acme")
    store.before_write = lambda: store.agents.__setitem__("a1", record("a1", "acme", version=2))
    changed = await Agents(store).update(ACME, "a1", {"name": "renamed"})
    assert (changed.name, changed.version) == ("renamed", 3)


async def test_an_if_match_of_the_caller_is_not_retried() -> None:
    store = MemoryAgents()
    store.agents["a1"] = record("a1", "acme", version=2)
    with pytest.raises(Aborted):
        await Agents(store).set_status(ACME, "a1", "inactive", expected=1)


async def test_an_owner_creates_for_itself_and_a_draft_status_is_a_warning() -> None:
    store = MemoryAgents()
    created = await Agents(store).create(ACME, NewAgent({"name": "n"}, "a2", "draft"))
    assert (created.agent.owner_id, created.agent.status) == ("acme", "created")
    assert len(created.warnings) == 1
    assert "'draft'" in created.warnings[0]
    assert initial_status("error") == ("error", [])
