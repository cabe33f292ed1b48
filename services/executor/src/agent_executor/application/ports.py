"""Application: the ports the run service needs, defined where they are used.

Each has an in-memory twin (`adapters/memory.py`) for unit tests and one real
adapter: the registry over gRPC, the tools service over gRPC, runs in SQL, run
events on JetStream, sessions in a LangGraph checkpointer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import (
    RunCursor,
    RunEvent,
    RunFilter,
    RunOutput,
    RunRecord,
    RunStatus,
    Usage,
)
from agentrt_kit.errors import Unavailable


class AgentSource(Protocol):
    """Where agents come from (the registry)."""

    async def get(self, agent_id: str, min_version: int = 0) -> AgentSnapshot:
        """The agent's latest version (`min_version` or later when the registry has it).

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


@dataclass(frozen=True, slots=True)
class AgentCodeStart:
    """An agent's code to run once in the tools service's sandbox, with its input.

    `code` is the source, or empty with `code_path` naming a file in the agent's
    workspace. The entry point is called with `messages` (`{role, content}` objects)
    and an agent object built from `agent` (`{id, name, version, config}`).
    """

    language: str  # python | javascript
    entry_point: str
    messages: Sequence[Mapping[str, str]]
    agent: Mapping[str, Any]
    context: ToolCallContext  # whose workspace and run (no idempotency key of its own)
    code: str = ""
    code_path: str = ""
    timeout_seconds: int = 30
    memory_mb: int = 256


@dataclass(frozen=True, slots=True)
class CodeProgress:
    """A line the code printed, or its `agent.progress(text)`."""

    text: str


@dataclass(frozen=True, slots=True)
class CodeToolCall:
    """The code calls a tool; answer it with `AgentCodeSession.answer(call_id, ...)`.

    `call_id` is unique within one run of the code.
    """

    call_id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CodeReport:
    """What the sandboxed code used and how it ended."""

    exit_code: int = 0
    timed_out: bool = False
    killed_reason: str = ""  # TIMEOUT, CPU_TIME, MEMORY, PIDS, OUTPUT, FILE_SIZE or ""
    duration_ms: int = 0
    cpu_ms: int = 0
    max_rss_kb: int = 0


@dataclass(frozen=True, slots=True)
class CodeFinished:
    """The code's end (its last event): the reply, or why it failed."""

    reply: str = ""
    report: CodeReport = CodeReport()
    # CODE_ERROR, TIMEOUT, LIMIT_EXCEEDED, INVALID_CODE, NOT_FOUND; "" when it succeeded
    error_code: str = ""
    error_message: str = ""
    stderr_tail: str = ""


AgentCodeEvent = CodeProgress | CodeToolCall | CodeFinished
# The reason (of a FailedPrecondition) the tools service refuses code with when it has no sandbox.
SANDBOX_UNAVAILABLE = "SANDBOX_UNAVAILABLE"


class AgentCodeSession(Protocol):
    """One run of an agent's code: its events, and the answers to its tool calls."""

    def __aiter__(self) -> AsyncIterator[AgentCodeEvent]:
        """The code's events, up to `CodeFinished`.

        Raises:
            AgentrtError: the run could not go on: `FailedPrecondition` with reason
                `SANDBOX_UNAVAILABLE` (the tools service has no sandbox),
                `ToolsUnavailable` (it cannot be reached, or the stream broke off).
        """
        ...

    async def answer(self, call_id: str, result: ToolOutcome) -> None:
        """Answer the code's tool call `call_id` (the code waits for it)."""
        ...


@dataclass(frozen=True, slots=True)
class SandboxRuntime:
    """A language the tools service's sandbox runs, and the modules code may import there."""

    language: str  # python | javascript | typescript
    version: str  # the interpreter's, e.g. "3.11.2"
    modules: tuple[str, ...] = ()  # its standard library or built-in modules: nothing else


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """Whether the tools service can run untrusted code now, how isolated, and why not."""

    available: bool
    isolation: str = ""  # bubblewrap | unsandboxed (development: no isolation) | ""
    reason: str = ""  # why code cannot run, when it cannot
    runtimes: tuple[SandboxRuntime, ...] = ()


class ToolGateway(Protocol):
    """The tools service."""

    async def list_tools(self) -> Sequence[ToolSpec]:
        """Every tool offered now.

        Raises:
            ToolsUnavailable: the tools service cannot be asked now.
        """
        ...

    async def sandbox(self) -> SandboxInfo:
        """The code sandbox as the tools service reports it now (never cached).

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

    def run_agent_code(
        self, start: AgentCodeStart
    ) -> AbstractAsyncContextManager[AgentCodeSession]:
        """Run an agent's code once, in a fresh sandbox, while the context is open.

        Leaving the context early (the run was cancelled or timed out, a budget ended
        it) stops the code. The call is never repeated by itself: a repeat would run
        the code twice.
        """
        ...


@dataclass(frozen=True, slots=True)
class Admission:
    """What the store checks when a run is admitted, atomically with recording it."""

    max_runs_per_agent: int = 0  # 0: unlimited
    session_key: str = ""  # runs of one session take turns when set
    lease_seconds: float = 60.0


class ClaimOutcome(StrEnum):
    """What an executor found when it tried to take a queued run."""

    CLAIMED = "claimed"  # it is this executor's to run now
    ENDED = "ended"  # it has ended already (acknowledge the delivery)
    BUSY = "busy"  # an earlier run of its session is queued or live (try later)
    ELSEWHERE = "elsewhere"  # another live executor runs it (a duplicate delivery)
    MISSING = "missing"  # no such run (its record was never stored)
    EXHAUSTED = "exhausted"  # started max_attempts times: now failed


@dataclass(frozen=True, slots=True)
class Claim:
    """What `RunStore.claim` found: the outcome, the record, and the request when claimed."""

    outcome: ClaimOutcome
    record: RunRecord | None = None
    request: bytes = b""


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What `RunStore.enqueue` did: the run (new or the existing one with that id)."""

    record: RunRecord
    created: bool
    same_request: bool  # for an existing run: whether it was started by the same request


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
        output: RunOutput | None = None,
        finish_reason: str = "",
        executor_id: str = "",
    ) -> bool:
        """Record how a running run ended; False when it had ended already.

        With `executor_id`, only that executor's claim of the run is ended.
        """
        ...

    def enqueue(self, record: RunRecord, request: bytes, *, reject_busy: bool) -> Enqueued:
        """Record a queued run with its request; an existing run id answers that run.

        Raises:
            SessionBusy: `reject_busy` and the run's session has a queued or live run.
        """
        ...

    def claim(self, run_id: str, executor_id: str, now: datetime, *, max_attempts: int) -> Claim:
        """Take a queued run, or one whose executor stopped renewing its lease, to run it."""
        ...

    def release(self, run_id: str, executor_id: str) -> bool:
        """Give a claimed run back to the queue (its executor stops before it ends)."""
        ...

    def live_in_session(self, session_key: str, now: datetime) -> list[str]:
        """The session's queued and live runs, oldest first."""
        ...

    def not_queued(self, run_id: str) -> None:
        """The queue did not take this queued run's notice: the next sweep re-queues it."""
        ...

    def unclaimed(self, before: datetime, now: datetime, limit: int) -> list[str]:
        """Queued runs nobody looked at since `before`, oldest first; marks them seen."""
        ...

    def get(self, run_id: str) -> RunRecord | None:
        """The run's record."""
        ...

    def select(self, where: RunFilter, after: RunCursor | None, limit: int) -> list[RunRecord]:
        """Up to `limit` runs matching `where`, newest first, each older than `after`.

        Newest first means by `created_at`, then `run_id`, both descending.
        """
        ...

    def request_cancel(
        self, run_id: str, now: datetime, *, rollback: bool = False
    ) -> tuple[RunRecord, bool] | None:
        """Flag a live run for cancellation (None when unknown).

        With `rollback`, mark it rolled back too (its steps are undone in its session).
        Returns the record and whether the run was live: flagged for its executor
        or, when that executor stopped renewing the lease, recorded as cancelled now.
        """
        ...

    def heartbeat(self, run_ids: Sequence[str], now: datetime) -> list[str]:
        """Renew the lease of live runs; the ids among them flagged for cancellation."""
        ...

    def expire(
        self, stale_before: datetime, now: datetime, *, queued_stale_before: datetime | None = None
    ) -> list[RunRecord]:
        """End runs whose executor stopped renewing their lease; the runs ended.

        Queued runs (which their queue redelivers) only once `queued_stale_before` passed.
        """
        ...


class QueueUnavailable(Unavailable):
    """The run queue or event log cannot be used now (the broker is down or not answering)."""

    default_reason = "QUEUE_UNAVAILABLE"


class QueueDelivery(Protocol):
    """One delivery of a queued run to this executor.

    Until it is acknowledged, the queue delivers the run again `ack_wait` seconds
    after the last `extend` — to whichever executor pulls next — up to
    `max_attempts + 1` deliveries in all: the executor dead-letters a run whose
    `attempt` is past `max_attempts`, and the broker stops there if it does not.
    """

    @property
    def run_id(self) -> str:
        """The queued run."""
        ...

    @property
    def attempt(self) -> int:
        """Which delivery this is: 1 the first time, more after a redelivery."""
        ...

    async def ack(self) -> None:
        """Done with the run (its terminal state is stored): never deliver it again.

        Raises:
            QueueUnavailable: the broker did not confirm it. It may still land;
                if not, the run is delivered again and its stored state decides.
        """
        ...

    async def retry(self, delay: float) -> None:
        """Not now: deliver it again after `delay` seconds (counts as an attempt).

        Never raises: when the broker cannot be told, the run comes back after `ack_wait`.
        """
        ...

    async def extend(self) -> None:
        """Still working on it: restart the redelivery timer (a heartbeat).

        Never raises: when the broker cannot be told, the run may be delivered again.
        """
        ...


@dataclass(frozen=True, slots=True)
class QueueStats:
    """How the run queue is doing, for health and metrics.

    None: the broker does not tell this figure (RabbitMQ: the oldest age and the
    redeliveries in progress never, the depth only through its management API; see
    each adapter).
    """

    depth: int | None = 0  # runs waiting or in progress, not yet acknowledged
    pending: int = 0  # runs waiting for a first delivery
    oldest_age_seconds: float | None = 0.0  # age of the oldest run awaiting a first delivery
    redelivered: int | None = 0  # deliveries in progress that are not first deliveries
    dead_letters: int = 0  # runs given up after max_attempts


@dataclass(frozen=True, slots=True)
class QueueReport:
    """One queue's figures for monitoring, or why they could not be had."""

    name: str  # run | webhook
    backend: str
    stats: QueueStats | None  # None: the broker could not be asked (`error` says why)
    error: str = ""


class RunQueue(Protocol):
    """The run queue: executors pull queued runs when they have a free slot.

    At-least-once: a run is delivered until an executor acknowledges it, which it
    does only after the run's terminal state is stored; a run id submitted twice
    is delivered once (while the broker remembers it; the run store decides anyway).
    Adapters: NATS JetStream (a work-queue stream and one durable pull consumer),
    Redis Streams (a consumer group) and RabbitMQ (a quorum queue).
    """

    backend: str  # the broker: nats, redis, rabbitmq (memory in tests)
    ack_wait: float
    max_attempts: int

    async def submit(self, run_id: str) -> None:
        """Queue a run.

        Raises:
            QueueUnavailable: the broker did not confirm it.
        """
        ...

    async def pull(self, max_count: int, timeout: float) -> Sequence[QueueDelivery]:
        """Up to `max_count` deliveries, waiting at most `timeout` s for a first one.

        Returns as soon as one is there (with what is there then, not a full batch),
        or [] when none came within `timeout`.

        Raises:
            QueueUnavailable: the broker cannot be asked now.
        """
        ...

    async def dead_letter(self, delivery: QueueDelivery, reason: str) -> None:
        """Give up on a run: record it on the dead-letter subject and acknowledge it.

        Raises:
            QueueUnavailable: the broker did not confirm it; the run stays queued.
        """
        ...

    async def stats(self) -> QueueStats:
        """Depth, age and redeliveries now.

        Raises:
            QueueUnavailable: the broker cannot be asked now.
        """
        ...


class RunEventLog(Protocol):
    """The stored events of every run, for streams that resume (JetStream)."""

    async def last_sequence(self, run_id: str) -> int:
        """The sequence number of the run's last stored event (0 when none is stored).

        Raises:
            QueueUnavailable: the store cannot be asked now.
        """
        ...

    async def last_event(self, run_id: str) -> RunEvent | None:
        """The run's last stored event (None when none is stored).

        Raises:
            QueueUnavailable: the store cannot be asked now.
        """
        ...

    def read(self, run_id: str, after: int) -> AsyncGenerator[RunEvent, None]:
        """The run's events with sequence > `after`, in order, stored then live.

        Ends after the run's last event (`RunCompleted`/`RunFailed`). Each sequence
        number is yielded once, increasing; a gap (events lost: a full publisher queue,
        the retention window) is logged and read across, never waited for.
        """
        ...


class RequestCodec(Protocol):
    """How a queued run's request is kept in the run store between submit and start."""

    def encode(self, request: Any) -> bytes:
        """The request as bytes."""
        ...

    def decode(self, data: bytes) -> Any:
        """The request from `encode`'s bytes."""
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


# Every checkpoint a run writes names the run in its metadata (LangGraph copies the run
# config's metadata there): resumes, rollbacks and session pruning go by it.
RUN_ID_KEY = "agentrt_run_id"


class SessionHistory(Protocol):
    """The checkpoints of the sessions (the checkpointer's threads), pruned to a bound."""

    async def prune(self, thread_id: str, *, keep: int, through_run: str) -> int:
        """Delete a thread's older checkpoints in one transaction; how many went.

        Of the checkpoints up to the newest one `through_run` wrote, the newest `keep`
        stay; the others go with their pending writes and the stored values no remaining
        checkpoint uses. A remaining checkpoint whose parent went is left without one.
        Checkpoints after it (a later run's, perhaps in flight) are never touched, so the
        thread's newest checkpoint always stays. Nothing goes when `through_run` wrote
        none, nor from a thread whose graph uses a LangGraph `DeltaChannel` (it rebuilds
        its values from older checkpoints). Only the root namespace is pruned.

        Raises:
            ValueError: `keep` is below 1.
        """
        ...
