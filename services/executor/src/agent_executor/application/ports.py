"""Application: the ports the run service needs, defined where they are used.

Each has an in-memory twin (`adapters/memory.py`) for unit tests and one real
adapter: the registry over gRPC, the tools service over gRPC, runs in SQL, run
events on JetStream, sessions in a LangGraph checkpointer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import RunCursor, RunEvent, RunFilter, RunRecord, RunStatus, Usage


class AgentSource(Protocol):
    """Where agents come from (the registry)."""

    async def get(self, agent_id: str) -> AgentSnapshot:
        """The agent's latest version.

        Raises:
            AgentNotFound: no such (live) agent.
            RegistryUnavailable: the registry cannot be asked now.
        """
        ...


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the tools service offers (hashable: graphs are cached per tool list)."""

    name: str
    description: str
    schema_json: str = "{}"  # JSON Schema of the arguments, as JSON text
    side_effect: str = "read_only"  # read_only | idempotent | at_most_once

    @classmethod
    def of(
        cls, name: str, description: str, schema: Mapping[str, Any], side_effect: str = "read_only"
    ) -> ToolSpec:
        """A spec from a schema object."""
        return cls(name, description, json.dumps(schema, sort_keys=True), side_effect)

    def arguments_schema(self) -> dict[str, Any]:
        """The JSON Schema of the arguments."""
        schema = json.loads(self.schema_json)
        return schema if isinstance(schema, dict) else {}


@dataclass(frozen=True, slots=True)
class ToolCallContext:
    """Who calls a tool, for the tools service's workspace, ledger and audit."""

    agent_id: str
    task_id: str
    run_id: str
    workspace: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool returned: text, structured data and artifacts, or an error the agent reads."""

    content: str = ""
    data: Mapping[str, Any] | None = None
    artifacts: Sequence[str] = ()
    error_code: str = ""
    error_message: str = ""
    replayed: bool = False

    @property
    def ok(self) -> bool:
        """True unless the tool reported an error."""
        return not self.error_code


class ToolGateway(Protocol):
    """The tools service."""

    async def list_tools(self) -> Sequence[ToolSpec]:
        """Every tool offered now.

        Raises:
            ToolsUnavailable: the tools service cannot be asked now.
        """
        ...

    async def invoke(
        self, name: str, arguments: Mapping[str, Any], context: ToolCallContext
    ) -> ToolOutcome:
        """Invoke a tool.

        Raises:
            AgentrtError: the tools service refused the call (bad arguments, a
                refused path or URL, unavailable); the agent is told why.
        """
        ...


@dataclass(frozen=True, slots=True)
class Admission:
    """What the store checks when a run is admitted, atomically with recording it."""

    max_runs_per_agent: int = 0  # 0: unlimited
    session_key: str = ""  # runs of one session take turns when set
    lease_seconds: float = 60.0


class RunStore(Protocol):
    """Durable run records (all methods are blocking: call them off the event loop)."""

    def admit(self, record: RunRecord, admission: Admission) -> None:
        """Record a new running run, if the agent's limit and the session allow it.

        Raises:
            RunExists: the run id is taken.
            TooManyRuns: the agent has `max_runs_per_agent` live runs.
            SessionBusy: the session has a live run.
        """
        ...

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
        """Record how a running run ended; False when it had ended already."""
        ...

    def get(self, run_id: str) -> RunRecord | None:
        """The run's record."""
        ...

    def select(self, where: RunFilter, after: RunCursor | None, limit: int) -> list[RunRecord]:
        """Up to `limit` runs matching `where`, newest first, each older than `after`.

        Newest first means by `created_at`, then `run_id`, both descending.
        """
        ...

    def request_cancel(self, run_id: str, now: datetime) -> tuple[RunRecord, bool] | None:
        """Flag a live run for cancellation (None when unknown).

        Returns the record and whether the run was live: flagged for its executor
        or, when that executor stopped renewing the lease, recorded as cancelled now.
        """
        ...

    def heartbeat(self, run_ids: Sequence[str], now: datetime) -> list[str]:
        """Renew the lease of live runs; the ids among them flagged for cancellation."""
        ...

    def expire(self, stale_before: datetime, now: datetime) -> int:
        """End runs whose executor stopped renewing their lease; how many."""
        ...


class RunEventSink(Protocol):
    """Where run events go besides the caller (JetStream: resumable streams, audit)."""

    def publish(self, event: RunEvent, agent_id: str, agent_version: int) -> None:
        """Queue an event for publication (never blocks or fails the run)."""
        ...

    async def flush(self, run_id: str) -> None:
        """Wait until the run's queued events are stored (or given up)."""
        ...


class ModelProblem(ValueError):
    """The agent names a model provider that is not configured or not usable."""


class ModelFactory(Protocol):
    """Chat models for agents (providers from the services config)."""

    def for_agent(self, agent: AgentSnapshot) -> Any:
        """The agent's chat model (a LangChain `BaseChatModel`).

        Raises:
            ModelProblem: the agent's `llm_config_id` names no usable provider.
        """
        ...


class CancelBus(Protocol):
    """Tells every executor replica to cancel a run (the one running it acts)."""

    async def broadcast(self, run_id: str) -> None:
        """Ask the replicas to cancel `run_id` (best effort; the store flag is the backstop)."""
        ...


class RunEndings(Protocol):
    """Hears runs end on whichever replica runs them (a hint: the record decides)."""

    def watch(self, run_id: str) -> AbstractAsyncContextManager[asyncio.Event]:
        """Listen for the end of `run_id` while the context is open.

        The event is set once the run's last event is heard. Open it before reading
        the record, so an end between the read and the wait is not missed. Never
        fails: when nothing can be heard, the event is simply never set.
        """
        ...
