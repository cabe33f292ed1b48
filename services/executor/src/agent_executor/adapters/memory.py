"""In-memory twins of the executor's ports, for unit tests and the scenario suites."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver

from agent_executor.application.ports import (
    RUN_ID_KEY,
    SANDBOX_UNAVAILABLE,
    Admission,
    AgentCodeEvent,
    AgentCodeStart,
    Claim,
    ClaimOutcome,
    CodeFinished,
    CodeToolCall,
    Enqueued,
    QueueDelivery,
    QueueStats,
    QueueUnavailable,
    SandboxInfo,
    ToolCallContext,
    ToolOutcome,
    ToolSpec,
)
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import (
    FailureCode,
    RunCursor,
    RunEvent,
    RunFilter,
    RunOutput,
    RunRecord,
    RunStatus,
    Usage,
)
from agent_executor.errors import (
    AgentNotFound,
    RunExists,
    SessionBusy,
    ToolsUnavailable,
    TooManyRuns,
)
from agentrt_kit.concurrency import wait_event
from agentrt_kit.errors import FailedPrecondition

ToolFunction = Callable[[Mapping[str, Any]], Awaitable[ToolOutcome]]


class InMemoryAgents:
    """Agents by id (latest version)."""

    def __init__(self, *agents: AgentSnapshot) -> None:
        self.agents = {a.id: a for a in agents}
        self.reads = 0

    def put(self, agent: AgentSnapshot) -> None:
        """Add or replace an agent."""
        self.agents[agent.id] = agent

    async def get(self, agent_id: str, min_version: int = 0) -> AgentSnapshot:
        """The agent, or AgentNotFound."""
        self.reads += 1
        agent = self.agents.get(agent_id)
        if agent is None:
            raise AgentNotFound(agent_id)
        return agent


class ScriptedAgentCode:
    """The code sandbox's twin: every run of agent code plays `events` in order.

    After a `CodeToolCall` the next event waits for its answer, as the code would.
    A script without `CodeFinished` never ends (the code keeps running) until its
    session is left, which counts as stopping the code (`stopped`).
    """

    def __init__(self, *events: AgentCodeEvent) -> None:
        self.events = events
        self.starts: list[AgentCodeStart] = []
        self.answers: list[tuple[str, ToolOutcome]] = []
        self.stopped = 0


class ScriptedCodeSession:
    """One run of a `ScriptedAgentCode` (the `AgentCodeSession` port)."""

    def __init__(self, script: ScriptedAgentCode | None) -> None:
        self._script = script
        self._answered: dict[str, asyncio.Event] = {}
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[AgentCodeEvent]:
        if self._script is None:
            raise FailedPrecondition(
                "this tools service has no code sandbox", reason=SANDBOX_UNAVAILABLE
            )
        for event in self._script.events:
            if isinstance(event, CodeToolCall):
                self._answered[event.call_id] = asyncio.Event()
            yield event
            if isinstance(event, CodeFinished):
                self.finished = True
                return
            if isinstance(event, CodeToolCall):
                await self._answered[event.call_id].wait()
        await asyncio.Event().wait()  # still running, until the session is left

    async def answer(self, call_id: str, result: ToolOutcome) -> None:
        """Record the answer; the code goes on."""
        assert self._script is not None
        assert call_id in self._answered, f"no tool call {call_id!r} to answer"
        self._script.answers.append((call_id, result))
        self._answered[call_id].set()


class InMemoryTools:
    """Tools as async functions; records every call. Agent code runs `agent_code`'s script.

    Without `agent_code`, running code fails as on a tools service without a sandbox.
    """

    def __init__(self) -> None:
        self.specs: dict[str, ToolSpec] = {}
        self.functions: dict[str, ToolFunction] = {}
        self.calls: list[tuple[str, dict[str, Any], ToolCallContext]] = []
        self.agent_code: ScriptedAgentCode | None = None
        # What `sandbox()` reports; None: the tools service cannot be asked.
        self.sandbox_info: SandboxInfo | None = SandboxInfo(False, reason="no sandbox in memory")

    def add(self, spec: ToolSpec, function: ToolFunction) -> None:
        """Offer a tool."""
        self.specs[spec.name] = spec
        self.functions[spec.name] = function

    async def list_tools(self) -> Sequence[ToolSpec]:
        """Every tool offered."""
        return tuple(self.specs.values())

    async def sandbox(self) -> SandboxInfo:
        """`sandbox_info`, or ToolsUnavailable when it is None."""
        if self.sandbox_info is None:
            raise ToolsUnavailable("tools service: not reachable (in memory)")
        return self.sandbox_info

    async def invoke(
        self, name: str, arguments: Mapping[str, Any], context: ToolCallContext
    ) -> ToolOutcome:
        """Call the tool's function."""
        self.calls.append((name, dict(arguments), context))
        return await self.functions[name](arguments)

    @asynccontextmanager
    async def run_agent_code(self, start: AgentCodeStart) -> AsyncIterator[ScriptedCodeSession]:
        """Play `agent_code`'s script."""
        script = self.agent_code
        if script is not None:
            script.starts.append(start)
        session = ScriptedCodeSession(script)
        try:
            yield session
        finally:
            if script is not None and not session.finished:
                script.stopped += 1


class InMemoryRunStore:
    """Run records in a dict, with the SQL store's admission rules."""

    def __init__(self, *, lease_seconds: float = 60.0) -> None:
        self.lease_seconds = lease_seconds
        self.records: dict[str, RunRecord] = {}
        self.heartbeats: dict[str, datetime] = {}
        self.cancel_flags: set[str] = set()
        self.requests: dict[str, bytes] = {}
        self.fingerprints: dict[str, str] = {}

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
        output: RunOutput | None = None,
        finish_reason: str = "",
        executor_id: str = "",
    ) -> bool:
        """Record the end of a running run."""
        record = self.records.get(run_id)
        if record is None or record.status is not RunStatus.RUNNING:
            return False
        if executor_id and record.executor_id != executor_id:
            return False
        self.records[run_id] = replace(
            record,
            status=status,
            finished_at=finished_at,
            usage=usage,
            tool_calls=tool_calls,
            error_code=error_code,
            error_message=error_message,
            output=output,
            finish_reason=finish_reason,
        )
        self.requests.pop(run_id, None)
        return True

    def _pending(self, session_key: str, now: datetime) -> list[RunRecord]:
        return sorted(
            (
                r
                for r in self.records.values()
                if r.session_key == session_key
                and (r.status is RunStatus.QUEUED or self._live(r, now, self.lease_seconds))
            ),
            key=lambda r: (r.created_at, r.run_id),
        )

    def enqueue(self, record: RunRecord, request: bytes, *, reject_busy: bool) -> Enqueued:
        """Record a queued run; an existing id answers that run."""
        key = (request, record.agent_id, record.metadata, record.webhook_url)
        if record.run_id in self.records:
            same = self.fingerprints.get(record.run_id) == repr(key)
            return Enqueued(copy.copy(self.records[record.run_id]), False, same)
        if (
            reject_busy
            and record.session_key
            and self._pending(record.session_key, record.created_at)
        ):
            raise SessionBusy(record.agent_id, record.task_id)
        self.records[record.run_id] = copy.copy(record)
        self.heartbeats[record.run_id] = record.created_at
        self.requests[record.run_id] = request
        self.fingerprints[record.run_id] = repr(key)
        return Enqueued(copy.copy(record), True, True)

    def claim(self, run_id: str, executor_id: str, now: datetime, *, max_attempts: int) -> Claim:
        """Take a queued run (or a stale one) to run it."""
        record = self.records.get(run_id)
        if record is None:
            return Claim(ClaimOutcome.MISSING)
        if record.status.terminal:
            return Claim(ClaimOutcome.ENDED, copy.copy(record))
        live = self._live(record, now, self.lease_seconds)
        if record.status is RunStatus.RUNNING and record.executor_id != executor_id and live:
            return Claim(ClaimOutcome.ELSEWHERE, copy.copy(record))
        if record.session_key:
            before = self._pending(record.session_key, now)
            if before and before[0].run_id != run_id:
                if record.status is RunStatus.QUEUED:
                    self.heartbeats[run_id] = now
                return Claim(ClaimOutcome.BUSY, copy.copy(record))
        if record.attempts >= max_attempts:
            record.stopped(
                RunStatus.FAILED,
                now,
                FailureCode.ATTEMPTS_EXHAUSTED,
                f"the run was started {record.attempts} times without ending",
            )
            return Claim(ClaimOutcome.EXHAUSTED, copy.copy(record))
        record.claimed(executor_id, now)
        self.heartbeats[run_id] = now
        return Claim(ClaimOutcome.CLAIMED, copy.copy(record), self.requests.get(run_id, b""))

    def release(self, run_id: str, executor_id: str) -> bool:
        """Put a claimed run back in the queue."""
        record = self.records.get(run_id)
        if record is None or record.status is not RunStatus.RUNNING:
            return False
        if record.executor_id != executor_id:
            return False
        record.status, record.executor_id = RunStatus.QUEUED, ""
        return True

    def not_queued(self, run_id: str) -> None:
        """The next sweep re-queues this queued run."""
        record = self.records.get(run_id)
        if record is not None and record.status is RunStatus.QUEUED:
            self.heartbeats[run_id] = datetime.fromtimestamp(0, record.created_at.tzinfo)

    def unclaimed(self, before: datetime, now: datetime, limit: int) -> list[str]:
        """Queued runs not seen since `before`; marks them seen."""
        found = sorted(
            (
                r
                for r in self.records.values()
                if r.status is RunStatus.QUEUED and self.heartbeats[r.run_id] < before
            ),
            key=lambda r: (r.created_at, r.run_id),
        )[:limit]
        for record in found:
            self.heartbeats[record.run_id] = now
        return [r.run_id for r in found]

    def live_in_session(self, session_key: str, now: datetime) -> list[str]:
        """The session's queued and live runs, oldest first."""
        return [r.run_id for r in self._pending(session_key, now)]

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

    def request_cancel(
        self, run_id: str, now: datetime, *, rollback: bool = False
    ) -> tuple[RunRecord, bool] | None:
        """Flag a live run; end a queued one or one whose executor stopped."""
        record = self.records.get(run_id)
        if record is None:
            return None
        if record.status.terminal:
            return copy.copy(record), False
        record.rolled_back = record.rolled_back or rollback
        queued = record.status is RunStatus.QUEUED
        if queued or self.heartbeats[run_id] < now - timedelta(seconds=self.lease_seconds):
            record.stopped(
                RunStatus.CANCELLED,
                now,
                "CANCELLED",
                "cancelled before it started" if queued else "cancelled after its executor stopped",
            )
            return copy.copy(record), True
        self.cancel_flags.add(run_id)
        return copy.copy(record), True

    def heartbeat(self, run_ids: Sequence[str], now: datetime) -> list[str]:
        """Renew leases; the flagged ids."""
        live = [r for r in run_ids if r in self.records and not self.records[r].status.terminal]
        for run_id in live:
            self.heartbeats[run_id] = now
        return [r for r in live if r in self.cancel_flags]

    def expire(
        self, stale_before: datetime, now: datetime, *, queued_stale_before: datetime | None = None
    ) -> list[RunRecord]:
        """End running runs with stale leases (queued ones past `queued_stale_before`)."""
        ended = []
        for run_id, record in list(self.records.items()):
            beat = self.heartbeats.get(run_id, record.created_at)
            bound = queued_stale_before if record.queued and queued_stale_before else stale_before
            if record.status is RunStatus.RUNNING and beat < bound:
                record.stopped(
                    RunStatus.FAILED,
                    now,
                    "EXECUTOR_LOST",
                    "the executor running it stopped renewing its lease",
                )
                ended.append(copy.copy(record))
        return ended


class ListEventSink:
    """Run events in a list (a `MemoryRunEventLog` reads them back)."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self._appended = asyncio.Event()

    def publish(self, event: RunEvent, agent_id: str, agent_version: int) -> None:
        """Keep the event."""
        self.events.append(event)
        self._appended.set()
        self._appended = asyncio.Event()

    def next_append(self) -> asyncio.Event:
        """An event the next `publish` sets (take it before looking at `events`)."""
        return self._appended

    async def flush(self, run_id: str) -> None:
        """Nothing to wait for."""


class MemoryRunEventLog:
    """The events a `ListEventSink` kept, read back as the JetStream log reads them.

    Repeats are skipped, a gap is yielded across, a run without events is waited
    for, and a read ends after the run's last event. `available = False` stands
    for NATS being away.
    """

    def __init__(self, sink: ListEventSink) -> None:
        self.sink = sink
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise QueueUnavailable("the run event log is unavailable")

    async def last_sequence(self, run_id: str) -> int:
        """The sequence of the run's last kept event (0 when none)."""
        last = await self.last_event(run_id)
        return last.sequence if last is not None else 0

    async def last_event(self, run_id: str) -> RunEvent | None:
        """The run's last kept event (None when none)."""
        self._check()
        return next((e for e in reversed(self.sink.events) if e.run_id == run_id), None)

    async def read(self, run_id: str, after: int) -> AsyncGenerator[RunEvent]:
        """The run's events after `after`, kept then live, until its last event."""
        self._check()
        last, seen = after, 0
        while True:
            appended = self.sink.next_append()
            while seen < len(self.sink.events):
                event = self.sink.events[seen]
                seen += 1
                if event.run_id != run_id:
                    continue
                if event.sequence > last:
                    last = event.sequence
                    yield event
                if event.terminal:
                    return
            await appended.wait()


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


# Metadata keys of the threads whose graph uses a LangGraph `DeltaChannel` (never pruned).
DELTA_MARKS = frozenset({"counters_since_delta_snapshot", "delta_writes_versioned"})


class InMemorySessionHistory:
    """Prunes the threads of LangGraph's `InMemorySaver` as the SQL adapters prune theirs."""

    def __init__(self, saver: InMemorySaver) -> None:
        self.saver = saver

    async def prune(self, thread_id: str, *, keep: int, through_run: str) -> int:
        """See `SessionHistory.prune`."""
        if keep < 1:
            raise ValueError(f"a session keeps at least its newest checkpoint, not {keep}")
        loads = self.saver.serde.loads_typed
        saved = self.saver.storage.get(thread_id, {}).get("", {})
        metadata = {cid: loads(meta) for cid, (_, meta, _) in saved.items()}
        if any(DELTA_MARKS & meta.keys() for meta in metadata.values()):
            return 0
        ours = [cid for cid, meta in metadata.items() if meta.get(RUN_ID_KEY) == through_run]
        if not ours:
            return 0
        doomed = sorted((cid for cid in saved if cid <= max(ours)), reverse=True)[keep:]
        freed: set[tuple[str, Any]] = set()
        for cid in doomed:
            freed.update(loads(saved.pop(cid)[0])["channel_versions"].items())
            self.saver.writes.pop((thread_id, "", cid), None)
        used: set[tuple[str, Any]] = set()
        for cid, (checkpoint, meta, parent) in list(saved.items()):
            used.update(loads(checkpoint)["channel_versions"].items())
            if parent in doomed:
                saved[cid] = (checkpoint, meta, None)
        for channel, version in freed - used:
            self.saver.blobs.pop((thread_id, "", channel, version), None)
        return len(doomed)


# ------------------------------------------------------------------ run queue


class _QueuedRun:
    """A run in the memory queue and where its deliveries stand."""

    def __init__(self, run_id: str, now: float) -> None:
        self.run_id = run_id
        self.submitted_at = now
        self.deliveries = 0
        self.due = now  # when it may be delivered (again)


class _QueueBroker:
    """What every handle on one memory queue shares: the queued runs and the broker's health."""

    def __init__(self) -> None:
        self.runs: dict[str, _QueuedRun] = {}  # in submission order
        self.seen: set[str] = set()  # every run id ever submitted (de-duplication)
        self.dead_letters: dict[str, dict[str, Any]] = {}
        self.available = True
        self.changed = asyncio.Event()  # wakes waiting pulls


class MemoryRunQueue:
    """The `RunQueue` port in memory, with the JetStream adapter's semantics.

    A run id is queued once, ever. Redelivery follows the monotonic clock: a
    delivery not acknowledged, retried or extended within `ack_wait` is delivered
    again, at most `max_attempts + 1` times in all. `replica()` is another
    executor's handle on the same queue and `close()` makes a handle vanish (its
    deliveries can no longer be acknowledged); `available = False` stands for the
    broker being down: calls raise `QueueUnavailable`, `extend` and `retry` are lost.
    """

    backend = "memory"

    def __init__(self, *, ack_wait: float = 30.0, max_attempts: int = 5) -> None:
        self.ack_wait = ack_wait
        self.max_attempts = max_attempts
        self._broker = _QueueBroker()
        self.closed = False

    def replica(self) -> MemoryRunQueue:
        """Another executor's handle on this queue."""
        twin = MemoryRunQueue(ack_wait=self.ack_wait, max_attempts=self.max_attempts)
        twin._broker = self._broker
        return twin

    @property
    def available(self) -> bool:
        """Whether the broker is up."""
        return self._broker.available

    @available.setter
    def available(self, value: bool) -> None:
        self._broker.available = value
        self._broker.changed.set()

    @property
    def dead_letters(self) -> dict[str, dict[str, Any]]:
        """Dead letters by run id: `{"run_id", "reason", "attempt"}`."""
        return self._broker.dead_letters

    async def close(self) -> None:
        """This handle vanishes; its unacknowledged deliveries come back after `ack_wait`."""
        self.closed = True
        self._broker.changed.set()

    def usable(self) -> bool:
        """Whether this handle can reach the broker now."""
        return self._broker.available and not self.closed

    def _check(self) -> None:
        if not self.usable():
            raise QueueUnavailable("the memory queue is down" if not self.closed else "closed")

    async def submit(self, run_id: str) -> None:
        """Queue the run unless its id was queued before."""
        self._check()
        if run_id not in self._broker.seen:
            self._broker.seen.add(run_id)
            self._broker.runs[run_id] = _QueuedRun(run_id, time.monotonic())
            self._broker.changed.set()

    async def pull(self, max_count: int, timeout: float) -> Sequence[QueueDelivery]:
        """Up to `max_count` runs that are due, as soon as one is ([] after `timeout`)."""
        broker = self._broker
        deadline = time.monotonic() + timeout
        while True:
            self._check()
            broker.changed.clear()
            now = time.monotonic()
            deliverable = [r for r in broker.runs.values() if r.deliveries <= self.max_attempts]
            due = [r for r in deliverable if r.due <= now][:max_count]
            if due:
                for run in due:
                    run.deliveries += 1
                    run.due = now + self.ack_wait
                return [MemoryDelivery(run, self) for run in due]
            if now >= deadline:
                return []
            wake = min([deadline, *(r.due for r in deliverable)])
            await wait_event(broker.changed, wake - now)

    async def dead_letter(self, delivery: QueueDelivery, reason: str) -> None:
        """Record the dead letter and drop the run."""
        if not isinstance(delivery, MemoryDelivery):
            raise TypeError(f"not a delivery of this queue: {delivery!r}")
        self._check()
        self._broker.dead_letters[delivery.run_id] = {
            "run_id": delivery.run_id,
            "reason": reason,
            "attempt": delivery.attempt,
        }
        await delivery.ack()

    async def stats(self) -> QueueStats:
        """Counts of the queued runs now."""
        self._check()
        runs = self._broker.runs.values()
        waiting = [r.submitted_at for r in runs if r.deliveries == 0]
        return QueueStats(
            depth=len(runs),
            pending=len(waiting),
            oldest_age_seconds=time.monotonic() - min(waiting) if waiting else 0.0,
            redelivered=sum(r.deliveries > 1 for r in runs),
            dead_letters=len(self._broker.dead_letters),
        )

    def settle(self, run: _QueuedRun, due: float | None) -> None:
        """Drop the run (`due` None) or make it due again at `due`."""
        if due is None:
            self._broker.runs.pop(run.run_id, None)
        else:
            run.due = due
        self._broker.changed.set()


class MemoryDelivery:
    """One delivery of a run from a `MemoryRunQueue`."""

    def __init__(self, run: _QueuedRun, queue: MemoryRunQueue) -> None:
        self._run = run
        self._queue = queue
        self.run_id = run.run_id
        self.attempt = run.deliveries
        self._settled = False

    def __repr__(self) -> str:
        return f"MemoryDelivery(run_id={self.run_id!r}, attempt={self.attempt})"

    async def ack(self) -> None:
        """Drop the run from the queue (a repeat does nothing).

        Raises:
            QueueUnavailable: the broker is down or this handle is closed.
        """
        if self._settled:
            return
        if not self._queue.usable():
            raise QueueUnavailable(f"acknowledgement of run {self.run_id} not confirmed")
        self._queue.settle(self._run, None)
        self._settled = True

    async def retry(self, delay: float) -> None:
        """Make the run due again in `delay` seconds (lost while the broker is down)."""
        if not self._settled and self._queue.usable():
            self._queue.settle(self._run, time.monotonic() + delay)
            self._settled = True

    async def extend(self) -> None:
        """Make the run due again `ack_wait` seconds from now (lost while the broker is down)."""
        if not self._settled and self._queue.usable():
            self._queue.settle(self._run, time.monotonic() + self._queue.ack_wait)
