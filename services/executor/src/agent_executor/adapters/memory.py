"""In-memory twins of the executor's ports, for unit tests and the scenario suites."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from agent_executor.application.ports import (
    Admission,
    ToolCallContext,
    ToolOutcome,
    ToolSpec,
)
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import RunCursor, RunEvent, RunFilter, RunRecord, RunStatus, Usage
from agent_executor.errors import AgentNotFound, RunExists, SessionBusy, TooManyRuns

ToolFunction = Callable[[Mapping[str, Any]], Awaitable[ToolOutcome]]


class InMemoryAgents:
    """Agents by id (latest version)."""

    def __init__(self, *agents: AgentSnapshot) -> None:
        self.agents = {a.id: a for a in agents}
        self.reads = 0

    def put(self, agent: AgentSnapshot) -> None:
        """Add or replace an agent."""
        self.agents[agent.id] = agent

    async def get(self, agent_id: str) -> AgentSnapshot:
        """The agent, or AgentNotFound."""
        self.reads += 1
        agent = self.agents.get(agent_id)
        if agent is None:
            raise AgentNotFound(agent_id)
        return agent


class InMemoryTools:
    """Tools as async functions; records every call."""

    def __init__(self) -> None:
        self.specs: dict[str, ToolSpec] = {}
        self.functions: dict[str, ToolFunction] = {}
        self.calls: list[tuple[str, dict[str, Any], ToolCallContext]] = []

    def add(self, spec: ToolSpec, function: ToolFunction) -> None:
        """Offer a tool."""
        self.specs[spec.name] = spec
        self.functions[spec.name] = function

    async def list_tools(self) -> Sequence[ToolSpec]:
        """Every tool offered."""
        return tuple(self.specs.values())

    async def invoke(
        self, name: str, arguments: Mapping[str, Any], context: ToolCallContext
    ) -> ToolOutcome:
        """Call the tool's function."""
        self.calls.append((name, dict(arguments), context))
        return await self.functions[name](arguments)


class InMemoryRunStore:
    """Run records in a dict, with the SQL store's admission rules."""

    def __init__(self, *, lease_seconds: float = 60.0) -> None:
        self.lease_seconds = lease_seconds
        self.records: dict[str, RunRecord] = {}
        self.heartbeats: dict[str, datetime] = {}
        self.cancel_flags: set[str] = set()

    def _live(self, record: RunRecord, now: datetime, lease: float) -> bool:
        beat = self.heartbeats.get(record.run_id, record.created_at)
        return record.status is RunStatus.RUNNING and beat > now - timedelta(seconds=lease)

    def admit(self, record: RunRecord, admission: Admission) -> None:
        """Record a running run if the limits allow it."""
        if record.run_id in self.records:
            raise RunExists(record.run_id)
        now = record.created_at
        live = [r for r in self.records.values() if self._live(r, now, admission.lease_seconds)]
        if admission.session_key and any(r.session_key == admission.session_key for r in live):
            raise SessionBusy(record.agent_id, record.task_id)
        limit = admission.max_runs_per_agent
        if limit and sum(r.agent_id == record.agent_id for r in live) >= limit:
            raise TooManyRuns(
                f"agent {record.agent_id!r} has {limit} runs in progress",
                reason="AGENT_RUN_LIMIT",
            )
        self.records[record.run_id] = copy.copy(record)
        self.heartbeats[record.run_id] = now

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        finished_at: datetime,
        usage: Usage,
        tool_calls: int,
        error_code: str = "",
        error_message: str = "",
    ) -> bool:
        """Record the end of a running run."""
        record = self.records.get(run_id)
        if record is None or record.status.terminal:
            return False
        self.records[run_id] = replace(
            record,
            status=status,
            finished_at=finished_at,
            usage=usage,
            tool_calls=tool_calls,
            error_code=error_code,
            error_message=error_message,
        )
        return True

    def get(self, run_id: str) -> RunRecord | None:
        """A copy of the record."""
        record = self.records.get(run_id)
        return copy.copy(record) if record else None

    def select(self, where: RunFilter, after: RunCursor | None, limit: int) -> list[RunRecord]:
        """Matching runs, newest first, older than `after`."""
        found = [
            copy.copy(r)
            for r in self.records.values()
            if (not where.agent_id or r.agent_id == where.agent_id)
            and (not where.task_id or r.task_id == where.task_id)
            and (where.status is None or r.status is where.status)
            and (not where.owner_id or r.owner_id == where.owner_id)
            and (after is None or (r.created_at, r.run_id) < (after.created_at, after.run_id))
        ]
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return found[:limit]

    def request_cancel(self, run_id: str, now: datetime) -> tuple[RunRecord, bool] | None:
        """Flag a live run."""
        record = self.records.get(run_id)
        if record is None:
            return None
        if record.status.terminal:
            return copy.copy(record), False
        if self.heartbeats[run_id] < now - timedelta(seconds=self.lease_seconds):
            self.finish(
                run_id,
                RunStatus.CANCELLED,
                finished_at=now,
                usage=record.usage,
                tool_calls=record.tool_calls,
                error_code="CANCELLED",
                error_message="cancelled after its executor stopped",
            )
            return copy.copy(self.records[run_id]), True
        self.cancel_flags.add(run_id)
        return copy.copy(record), True

    def heartbeat(self, run_ids: Sequence[str], now: datetime) -> list[str]:
        """Renew leases; the flagged ids."""
        live = [r for r in run_ids if r in self.records and not self.records[r].status.terminal]
        for run_id in live:
            self.heartbeats[run_id] = now
        return [r for r in live if r in self.cancel_flags]

    def expire(self, stale_before: datetime, now: datetime) -> int:
        """End running runs with stale leases."""
        count = 0
        for run_id, record in list(self.records.items()):
            beat = self.heartbeats.get(run_id, record.created_at)
            if record.status is RunStatus.RUNNING and beat < stale_before:
                self.finish(
                    run_id,
                    RunStatus.FAILED,
                    finished_at=now,
                    usage=record.usage,
                    tool_calls=record.tool_calls,
                    error_code="EXECUTOR_LOST",
                    error_message="the executor running it stopped",
                )
                count += 1
        return count


class ListEventSink:
    """Run events in a list."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def publish(self, event: RunEvent, agent_id: str, agent_version: int) -> None:
        """Keep the event."""
        self.events.append(event)

    async def flush(self, run_id: str) -> None:
        """Nothing to wait for."""


class LocalCancelBus:
    """Cancels through a callback (one process stands for every replica)."""

    def __init__(self) -> None:
        self.targets: list[Callable[[str], bool]] = []
        self.sent: list[str] = []

    async def broadcast(self, run_id: str) -> None:
        """Tell every registered target."""
        self.sent.append(run_id)
        for target in self.targets:
            target(run_id)
        await asyncio.sleep(0)


class LocalRunEndings:
    """Run ends announced in-process (`ended(run_id)` stands for the run's last event)."""

    def __init__(self) -> None:
        self.watchers: dict[str, list[asyncio.Event]] = {}

    @asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set by `ended(run_id)` while the context is open."""
        event = asyncio.Event()
        self.watchers.setdefault(run_id, []).append(event)
        try:
            yield event
        finally:
            self.watchers[run_id].remove(event)

    def ended(self, run_id: str) -> None:
        """Announce that the run has ended."""
        for event in self.watchers.get(run_id, []):
            event.set()
