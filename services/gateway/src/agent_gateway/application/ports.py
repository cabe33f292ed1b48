"""Application: the ports the gateway's use cases need (the registry, executor, catalogue).

Adapters implement them over gRPC and NATS and raise the kit's errors
(`agentrt_kit.errors`): a refusal of the registry or executor arrives as the error
the service sent, with its reason and field violations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from agent_gateway.domain.agents import AgentChange, AgentRecord
from agent_gateway.domain.chat import (
    Composed,
    ComposeInput,
    Delta,
    Finished,
    Progress,
    RunInput,
    RunResult,
    Started,
    ToolCalls,
)
from agent_gateway.domain.runs import RunQuery, RunRecord

Probe = Callable[[], Awaitable[bool]]
TemplateView = dict[str, Any]


class AgentStore(Protocol):
    """Agents: read and changed in the registry."""

    async def get(self, agent_id: str, version: int = 0) -> AgentRecord:
        """One agent, latest or as of `version`."""
        ...

    async def history(
        self, agent_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[AgentChange], str]:
        """A page of the agent's events and the next page's token."""
        ...

    async def list_agents(
        self, *, template_id: str, active_only: bool, limit: int, offset: int, owner_id: str = ""
    ) -> list[AgentRecord]:
        """A page of agents in the registry's order."""
        ...

    async def create(
        self, agent_id: str, spec: Mapping[str, Any], status: str | None
    ) -> tuple[AgentRecord, list[str]]:
        """A new agent and the registry's warnings."""
        ...

    async def update(
        self, agent_id: str, changes: Mapping[str, Any], expected: int | None
    ) -> tuple[AgentRecord, list[str]]:
        """The updated agent and warnings."""
        ...

    async def set_status(self, agent_id: str, status: str, expected: int | None) -> AgentRecord:
        """The agent with its new status."""
        ...

    async def delete(self, agent_id: str, expected: int | None) -> None:
        """Delete the agent."""
        ...


class RunStream(Protocol):
    """A streamed run that has started."""

    started: Started

    def events(self) -> AsyncIterator[Delta | ToolCalls | Progress | Finished]:
        """Its events until `Finished` (raises when the stream breaks off)."""
        ...

    def close(self) -> None:
        """Stop listening; the executor cancels the run if it still runs."""
        ...


class Runner(Protocol):
    """Where agents run (the executor)."""

    async def execute(self, run: RunInput, *, timeout: float) -> RunResult:
        """Run to the end."""
        ...

    async def stream(self, run: RunInput, *, timeout: float, progress: bool) -> RunStream:
        """Open a streamed run (returns once it started); `progress` keeps Progress events."""
        ...

    async def compose(self, request: ComposeInput, *, timeout: float) -> Composed:
        """An agent draft and its validation."""
        ...


class RunRecords(Protocol):
    """The executors' durable run records."""

    async def get_run(self, run_id: str) -> RunRecord:
        """One run's record (NotFound with RUN_NOT_FOUND when unknown)."""
        ...

    async def list_runs(self, query: RunQuery) -> tuple[list[RunRecord], str]:
        """A page of runs, newest first, and the next page's token."""
        ...

    async def wait_run(self, run_id: str, timeout: float) -> RunRecord:
        """The run once ended, or as it is after `timeout` seconds."""
        ...

    async def cancel_run(self, run_id: str) -> bool:
        """Ask the run to stop; False when it had ended already."""
        ...


class Templates(Protocol):
    """Template objects (the catalogue, kept current)."""

    @property
    def synced(self) -> asyncio.Event:
        """Set once the first copy of the templates has arrived."""
        ...

    def latest(self) -> dict[str, TemplateView]:
        """The latest object of every template, by id."""
        ...

    async def lookup(self, template_id: str) -> TemplateView | None:
        """One template read from the source itself (it may be newer than the copy held)."""
        ...
