"""The gateway's use cases over in-memory twins of their ports (agents, the queues)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from agent_gateway.application.agents import Agents, NewAgent, initial_status
from agent_gateway.application.system import QueueWatch
from agent_gateway.domain.agents import AgentRecord
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.queues import QueueFigures, Queues, health_queue, queues_body
from agentrt_kit.errors import Aborted, NotFound, Unavailable


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


class CountedQueues:
    """The executor's queue figures, counting the calls; `fail` makes them fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.timeouts: list[float] = []
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def queues(self, *, timeout: float) -> Queues:
        self.calls += 1
        self.timeouts.append(timeout)
        await self.gate.wait()
        if self.fail:
            raise Unavailable("the executor cannot be asked", reason="UNAVAILABLE")
        return Queues("nats", 3, (run_figures(depth=self.calls),))


def run_figures(**figures: Any) -> QueueFigures:
    """The run queue on NATS, available, with these figures (the rest as an idle queue's)."""
    idle = {"depth": 0, "pending": 0, "oldest_age_seconds": 0.0, "redelivered": 0}
    return QueueFigures("run", "nats", True, **{**idle, "dead_letters": 0, **figures})


def depth(found: Queues | None) -> int | None:
    assert found is not None
    run = found.named("run")
    assert run is not None
    return run.depth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_queue_figures_are_asked_at_most_once_a_second() -> None:
    source, clock = CountedQueues(), Clock()
    watch = QueueWatch(source, timeout=0.25, clock=clock)
    first = await watch.current()
    assert (depth(first), source.timeouts) == (1, [0.25])
    clock.now += 0.9
    assert await watch.current() == first
    clock.now += 0.1
    again = await watch.current()
    assert (depth(again), source.calls) == (2, 2)


async def test_readers_arriving_while_the_queues_are_asked_share_the_call() -> None:
    source = CountedQueues()
    source.gate.clear()
    watch = QueueWatch(source, timeout=1.0)
    readers = [asyncio.create_task(watch.current()) for _ in range(5)]
    await asyncio.sleep(0.01)
    source.gate.set()
    found = await asyncio.gather(*readers)
    assert source.calls == 1
    assert [depth(f) for f in found] == [1] * 5


async def test_figures_that_cannot_be_asked_are_none_and_not_asked_again_at_once() -> None:
    source, clock = CountedQueues(), Clock()
    source.fail = True
    watch = QueueWatch(source, timeout=1.0, clock=clock)
    assert await watch.current() is None
    assert await watch.current() is None
    assert source.calls == 1
    source.fail = False
    clock.now += 1.0
    assert await watch.current() is not None


def test_health_shows_the_run_queue_with_unknown_figures_as_null() -> None:
    assert health_queue(None) == {"status": "unavailable"}
    no_run_queue = Queues("nats", 1, (QueueFigures("webhook", "nats", True),))
    assert health_queue(no_run_queue) == {"status": "unavailable"}
    rabbit = run_figures(depth=None, pending=4, oldest_age_seconds=None, redelivered=None)
    assert health_queue(Queues("redis", 3, (dataclasses.replace(rabbit, backend="rabbitmq"),))) == {
        "status": "ok",
        "backend": "rabbitmq",
        "bus_backend": "redis",
        "depth": None,
        "pending": 4,
        "oldest_age_seconds": None,
        "redelivered": None,
        "dead_letters": 0,
        "free_slots": 3,
    }
    down = QueueFigures("run", "redis", False, "refused")
    assert health_queue(Queues("nats", 0, (down,)))["status"] == "unavailable"
    assert "error" not in health_queue(Queues("nats", 0, (down,)))  # for admins only


def test_the_queue_list_says_why_a_queue_is_unavailable() -> None:
    found = Queues(
        "nats",
        2,
        (
            run_figures(pending=1),
            QueueFigures("webhook", "redis", False, "refused"),
            QueueFigures("webhook", "redis", False),
        ),
    )
    assert queues_body(found) == {
        "bus_backend": "nats",
        "free_slots": 2,
        "queues": [
            {
                "name": "run",
                "backend": "nats",
                "status": "ok",
                "depth": 0,
                "pending": 1,
                "oldest_age_seconds": 0.0,
                "redelivered": 0,
                "dead_letters": 0,
            },
            {
                "name": "webhook",
                "backend": "redis",
                "status": "unavailable",
                "error": "refused",
                "depth": None,
                "pending": None,
                "oldest_age_seconds": None,
                "redelivered": None,
                "dead_letters": None,
            },
            {  # the executor did not say why
                "name": "webhook",
                "backend": "redis",
                "status": "unavailable",
                "error": "the broker could not be asked",
                "depth": None,
                "pending": None,
                "oldest_age_seconds": None,
                "redelivered": None,
                "dead_letters": None,
            },
        ],
    }
