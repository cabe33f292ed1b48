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
from agent_gateway.domain.queues import Queues
from agent_gateway.domain.runs import RunQuery, RunRecord, RunStart, StoredEvent

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
    sequence: int  # the sequence number of the last of the run's events read (0: none)

    def events(self) -> AsyncIterator[Delta | ToolCalls | Progress | Finished]:
        """Its events until `Finished` (raises when the stream breaks off)."""
        ...

    def close(self) -> None:
        """Stop listening; the run goes on if it still runs (`RunRecords.cancel_run`)."""
        ...


class Runner(Protocol):
    """Where agents run (the executor).

    A run started here outlives the call that started it: a caller that stops waiting
    (a stopping gateway) leaves it running, to be joined or followed as any run is;
    `RunRecords.cancel_run` stops it. Only the call's deadline ends it with the call.
    """

    async def execute(self, run: RunInput, *, timeout: float) -> RunResult:
        """Run to the end."""
        ...

    async def stream(self, run: RunInput, *, timeout: float, progress: bool) -> RunStream:
        """Open a streamed run (returns once it started); `progress` keeps Progress events."""
        ...

    async def replay(self, run_id: str, *, timeout: float, progress: bool) -> RunStream:
        """An existing run's stream from its first event (returns once its start is read).

        Closing it stops listening; the run goes on.
        """
        ...

    async def start(self, start: RunStart) -> tuple[RunRecord, bool]:
        """Queue a run: its record, and whether it is new.

        A run id naming a run the same request started answers that run (not new); one
        another request started is AlreadyExists (RUN_EXISTS).
        """
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

    async def cancel_run(self, run_id: str, *, rollback: bool = False) -> bool:
        """Ask the run to stop; False when it had ended already (`rollback`: undo it too)."""
        ...

    def run_events(self, run_id: str, after: int) -> AsyncIterator[StoredEvent]:
        """The run's stored events after sequence `after`, live until its last one.

        Raises (while iterating): the kit error of a stream that broke off.
        """
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

    def executor_entries(self) -> list[Mapping[str, Any]]:
        """Every executor's entry as published (`_executors/<id>`), expired ones too."""
        ...


class QueueSource(Protocol):
    """The queues' figures (the executor; any replica answers for every queue)."""

    async def queues(self, *, timeout: float) -> Queues:
        """The figures now, asked within `timeout` seconds.

        A queue whose broker cannot be asked is in the answer, unavailable.

        Raises:
            AgentrtError: the executor could not be asked within `timeout`.
        """
        ...
