"""Application: reading runs — one record, a filtered page, or one once it has ended.

The read side of runs, apart from `RunService` (which admits and drives them):
every answer comes from the run store, so any replica answers for a run running
anywhere. A listing is newest first and paged with an opaque token that carries
where the page ended and which filters it was issued for. A wait re-reads the
record when the run-end hint arrives (its last event, heard from whichever
replica runs it) and, in case a hint is lost, after `poll_seconds`, then ever less
often (up to `MAX_POLL_FACTOR` times that); it holds no run slot, and at most
`max_waits` waits run at once on a replica, so waiting callers cannot crowd out the
store's connections.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from agent_executor.application.ports import RunEndings, RunEventLog, RunStore
from agent_executor.application.runs import RUN_ID, BlockingCall
from agent_executor.domain.runs import RunCursor, RunEvent, RunFilter, RunRecord, RunStatus
from agent_executor.errors import RunNotFound
from agentrt_kit.concurrency import wait_event
from agentrt_kit.errors import OutOfRange, ResourceExhausted, Unavailable, invalid

DEFAULT_PAGE = 50
MAX_PAGE = 1000
MAX_WAIT_SECONDS = 300.0
MAX_POLL_FACTOR = 10  # a wait re-reads at most every poll_seconds * this once it has waited
MAX_TOKEN_CHARS = 1024
MAX_FILTER_CHARS = 128
TAIL_SECONDS = 5.0  # how long an ended run's missing last event is waited for


def _at_end(after: int, last: RunEvent) -> bool:
    """Whether a reader at `after` has read every event stored when it began."""
    return after >= last.sequence


class RunQueries:
    """Reads run records for GetRun, ListRuns and WaitRun."""

    def __init__(
        self,
        *,
        store: RunStore,
        endings: RunEndings,
        call_store: BlockingCall,
        event_log: RunEventLog | None = None,
        tail_seconds: float = TAIL_SECONDS,
        poll_seconds: float = 1.0,
        max_waits: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.endings = endings
        self.event_log = event_log
        self.tail_seconds = tail_seconds
        self.call_store = call_store
        self.poll_seconds = poll_seconds
        self.max_waits = max_waits
        self.clock = clock
        self._waiting = 0

    async def get(self, run_id: str) -> RunRecord:
        """The run's durable record (an id no run can have is not looked up).

        Raises:
            RunNotFound: no run has this id.
        """
        if not RUN_ID.fullmatch(run_id):  # no run has such an id (nor a NUL for the database)
            raise RunNotFound(run_id)
        record: RunRecord | None = await self.call_store(self.store.get, run_id)
        if record is None:
            raise RunNotFound(run_id)
        return record

    async def list(
        self,
        *,
        agent_id: str = "",
        task_id: str = "",
        status: str = "",
        owner_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[RunRecord], str]:
        """One page of runs matching every given filter, newest first, and the next token.

        Raises:
            InvalidArgument: a bad `status`, `page_size` or `page_token` (named).
        """
        for name, value in (("agent_id", agent_id), ("task_id", task_id), ("owner_id", owner_id)):
            if len(value) > MAX_FILTER_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise invalid(name, f"must be at most {MAX_FILTER_CHARS} printable characters")
        if page_size < 0 or page_size > MAX_PAGE:
            raise invalid("page_size", f"must be between 1 and {MAX_PAGE} (0 means {DEFAULT_PAGE})")
        limit = page_size or DEFAULT_PAGE
        try:
            where = RunFilter(agent_id, task_id, RunStatus(status) if status else None, owner_id)
        except ValueError:
            names = ", ".join(s.value for s in RunStatus)
            raise invalid("status", f"must be one of {names} (or empty)") from None
        fingerprint = _fingerprint(where)
        after = _decode_token(page_token, fingerprint) if page_token else None
        records: list[RunRecord] = await self.call_store(self.store.select, where, after, limit + 1)
        page = records[:limit]
        token = ""
        if len(records) > limit:
            token = _encode_token(RunCursor(page[-1].created_at, page[-1].run_id), fingerprint)
        return page, token

    async def events(self, run_id: str, after: int) -> AsyncIterator[RunEvent]:
        """The run's events after sequence `after`, stored then live, up to its last.

        A finished run whose events are no longer kept is OUT_OF_RANGE (they are kept
        for the run-events retention window, 24 h by default).

        Raises:
            RunNotFound: no run has this id.
            InvalidArgument: `after` is negative.
            Unavailable: events are not kept by this deployment, or cannot be read now.
        """
        if after < 0:
            raise invalid("after_sequence", "must be 0 or more")
        record = await self.get(run_id)
        if self.event_log is None:
            raise Unavailable("this executor keeps no run events")
        if not record.status.terminal:
            async for event in self.event_log.read(run_id, after):
                yield event
            return
        last = await self.event_log.last_event(run_id)
        if last is None:
            raise OutOfRange(
                f"the events of run {run_id} are no longer kept",
                reason="RUN_EVENTS_EXPIRED",
                metadata={"run_id": run_id},
            )
        if last.terminal and after >= last.sequence:
            return
        # An ended run whose last event is not stored yet (it is being flushed) or never
        # will be (lost): wait a little for it, then end where the stored events end.
        tail = None if last.terminal else self.tail_seconds
        reader = self.event_log.read(run_id, after)
        try:
            while True:
                try:
                    async with asyncio.timeout(tail if tail and _at_end(after, last) else None):
                        event = await anext(reader)
                except (StopAsyncIteration, TimeoutError):
                    return
                after = event.sequence
                yield event
        finally:
            await reader.aclose()

    async def wait(self, run_id: str, timeout: float) -> tuple[RunRecord, bool]:
        """The run's record once it has ended or `timeout` seconds passed, and whether it ended.

        Raises:
            InvalidArgument: `timeout` is not between 0 and 300 seconds.
            RunNotFound: no run has this id.
            ResourceExhausted: this replica has `max_waits` waits open.
        """
        if not (math.isfinite(timeout) and 0 <= timeout <= MAX_WAIT_SECONDS):
            raise invalid("timeout_seconds", f"must be between 0 and {MAX_WAIT_SECONDS:g}")
        record = await self.get(run_id)
        if record.status.terminal or timeout == 0:
            return record, record.status.terminal
        if self._waiting >= self.max_waits:
            raise ResourceExhausted(
                f"this executor has {self.max_waits} waits open; retry later",
                reason="TOO_MANY_WAITS",
            )
        self._waiting += 1
        try:
            return await self._wait(run_id, timeout)
        finally:
            self._waiting -= 1

    async def _wait(self, run_id: str, timeout: float) -> tuple[RunRecord, bool]:
        deadline = self.clock() + timeout
        interval = self.poll_seconds
        async with self.endings.watch(run_id) as ended:
            while True:
                # Read after listening: an end that came before this read is in the record.
                record = await self.get(run_id)
                remaining = deadline - self.clock()
                if record.status.terminal or remaining <= 0:
                    return record, record.status.terminal
                if await wait_event(ended, min(remaining, interval)):
                    ended.clear()  # heard once; later rounds fall back to polling
                else:  # nothing heard: the hint is what answers; polling is the backstop
                    interval = min(interval * 2, self.poll_seconds * MAX_POLL_FACTOR)


def _fingerprint(where: RunFilter) -> str:
    status = where.status.value if where.status else ""
    doc = json.dumps([where.agent_id, where.task_id, status, where.owner_id])
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def _encode_token(cursor: RunCursor, fingerprint: str) -> str:
    doc = {"at": cursor.created_at.isoformat(), "run": cursor.run_id, "filter": fingerprint}
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _decode_token(token: str, fingerprint: str) -> RunCursor:
    if len(token) > MAX_TOKEN_CHARS:
        raise invalid("page_token", "is not a token this service issued")
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = RunCursor(datetime.fromisoformat(doc["at"]), str(doc["run"]))
        issued_for = str(doc["filter"])
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise invalid("page_token", "is not a token this service issued") from None
    if cursor.created_at.tzinfo is None:
        raise invalid("page_token", "is not a token this service issued")
    if issued_for != fingerprint:
        raise invalid("page_token", "was issued for other filters")
    return cursor
