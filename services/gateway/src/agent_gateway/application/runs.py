"""Application: runs as resources — read, listed, joined, followed and cancelled.

Every chat completion is a run with a durable record in the executors' store, and
every run keeps its events, which a caller may follow from any point (`events`). A
key bound to an owner sees only runs of its owner's agents (another owner's run is
"not found", as a missing one is), and lists only those. A join still waiting when a
stopping gateway drains is answered with the run as it is then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agent_gateway.application.draining import Drained, unless_drained
from agent_gateway.application.ports import RunRecords
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.limits import StreamSlots
from agent_gateway.domain.runs import OPEN, RunQuery, RunRecord, StoredEvent
from agent_gateway.errors import over_limit
from agentrt_kit.errors import NotFound


def run_not_found(run_id: str) -> NotFound:
    """No such run — or one of another owner's agent (indistinguishable)."""
    return NotFound(f"run {run_id[:200]!r} not found", reason="RUN_NOT_FOUND")


def take_slot(slots: StreamSlots, key: str, kind: str) -> None:
    """Take one of the caller's slots of `kind` (`streams`, `waits`).

    Raises:
        ResourceExhausted: all are in use (429 with `details.scope` = `kind`).
    """
    if not slots.acquire(key):
        raise over_limit(
            f"at most {slots.limit} {kind} may be open per key",
            {"scope": kind, "limit": str(slots.limit)},
        )


class EventFeed:
    """A run's events followed by a caller; it holds a stream slot until `close`."""

    def __init__(
        self, run: RunRecord, events: AsyncIterator[StoredEvent], slots: StreamSlots, key: str
    ) -> None:
        self.run = run
        self._events = events
        self._slots = slots
        self._key = key
        self._closed = False

    def events(self) -> AsyncIterator[StoredEvent]:
        """The events, up to the run's last one (raises when the stream breaks off)."""
        return self._events

    async def close(self) -> None:
        """Give the stream slot back (once)."""
        if not self._closed:
            self._closed = True
            self._slots.release(self._key)


class Runs:
    """Run records on behalf of a caller."""

    def __init__(
        self,
        records: RunRecords,
        *,
        waits: StreamSlots,
        streams: StreamSlots,
        draining: asyncio.Event | None = None,
    ) -> None:
        self._records = records
        self._waits = waits
        self._streams = streams
        self._draining = draining or asyncio.Event()

    def _visible(self, caller: Principal, run: RunRecord) -> RunRecord:
        if not caller.sees(run.owner_id):
            raise run_not_found(run.run_id)
        return run

    async def get(self, caller: Principal, run_id: str) -> RunRecord:
        """One run."""
        return self._visible(caller, await self._records.get_run(run_id))

    async def page(self, caller: Principal, query: RunQuery) -> tuple[list[RunRecord], str]:
        """A page of the caller's runs, newest first, and the next page's token."""
        if caller.owner is not None:
            query = RunQuery(
                query.agent_id,
                query.task_id,
                query.status,
                caller.owner,
                query.limit,
                query.page_token,
            )
        return await self._records.list_runs(query)

    async def wait(self, caller: Principal, run_id: str, timeout: float) -> RunRecord:
        """The run once it has ended, or as it is when `timeout` seconds have passed.

        A stopping gateway answers sooner, with the run as it is when it drains.

        Raises:
            ResourceExhausted: the caller has `waits.limit` waits open already.
        """
        run = self._visible(caller, await self._records.get_run(run_id))
        if run.status not in OPEN or timeout == 0 or self._draining.is_set():
            return run
        take_slot(self._waits, caller.id, "waits")
        try:
            return await unless_drained(self._draining, self._records.wait_run(run_id, timeout))
        except Drained:
            return await self._records.get_run(run_id)
        finally:
            self._waits.release(caller.id)

    async def events(self, caller: Principal, run_id: str, after: int) -> EventFeed:
        """Follow the run's events after sequence `after` (0: all), up to its last one.

        Raises:
            NotFound: RUN_NOT_FOUND (checked before anything is streamed).
            ResourceExhausted: the caller has every stream slot in use.
        """
        run = self._visible(caller, await self._records.get_run(run_id))
        take_slot(self._streams, caller.id, "streams")
        return EventFeed(run, self._records.run_events(run_id, after), self._streams, caller.id)

    async def cancel(
        self, caller: Principal, run_id: str, *, rollback: bool = False
    ) -> tuple[RunRecord, bool]:
        """Ask the run to stop; whether it was still running, and its record.

        With `rollback`, the run is also undone in its conversation: the next run on it
        starts from the state before this one.
        """
        self._visible(caller, await self._records.get_run(run_id))
        cancelled = await self._records.cancel_run(run_id, rollback=rollback)
        return await self._records.get_run(run_id), cancelled
