"""Adapter helper: the in-process queue every run-event sink (JetStream, Redis) sends from.

`publish` only queues, so a run never waits on the broker: one task per sink (the
*pump*, the sink's own `_send_forever`) takes the queue in order. While the broker is
away the pump waits and the queue holds the events, up to `max_queued`; beyond, events
are dropped, counted (`dropped`, and per run until `flush`) and logged once per run.
A flush puts a marker on the queue that the pump resolves once everything queued
before it has been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from agent_executor.domain.runs import RunEvent
from agentrt_kit.concurrency import cancel_and_wait

# (event, agent id, agent version, flush marker): a marker instead of an event
# resolves once everything queued before it has been sent.
Queued = tuple[RunEvent | None, str, int, "asyncio.Future[None] | None"]


class EventOutbox:
    """The queue, counters and pump a run-event sink shares with its kind.

    Logs to the sink's own logger, so its records keep the sink's name.
    """

    def __init__(self, max_queued: int, log: logging.Logger) -> None:
        self._log = log
        self._queue: asyncio.Queue[Queued] = asyncio.Queue(max_queued)
        self._lost: dict[str, int] = {}  # events of a run dropped, until its flush
        self._pump: asyncio.Task[None] | None = None
        self.unsent = 0  # events queued or being sent
        self.published = 0
        self.dropped = 0

    def _start_pump(self, pump: Coroutine[Any, Any, None]) -> None:
        self._pump = asyncio.create_task(pump, name="run-events")

    async def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop."""
        if self._pump is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        await cancel_and_wait(self._pump)
        self._pump = None
        if self.unsent:
            self._log.warning("run events not sent before stopping", extra={"events": self.unsent})

    def publish(self, event: RunEvent, agent_id: str, agent_version: int) -> None:
        """Queue an event (dropped, counted and logged when the queue is full)."""
        try:
            self._queue.put_nowait((event, agent_id, agent_version, None))
            self.unsent += 1
        except asyncio.QueueFull:
            if self._drop(event) == 1:
                self._log.warning(
                    "run event queue full: events dropped",
                    extra={"run_id": event.run_id, "sequence": event.sequence},
                )

    def _drop(self, event: RunEvent) -> int:
        """Count a dropped event; how many of its run were dropped so far."""
        self.dropped += 1
        lost = self._lost[event.run_id] = self._lost.get(event.run_id, 0) + 1
        return lost

    async def _sent_within(self, run_id: str, timeout: float) -> bool:
        """Wait until what was queued before now is sent; False (logged) after `timeout`."""
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._queue.put((None, run_id, 0, marker))
                await marker  # cancelled on timeout: the pump then skips it
        except TimeoutError:
            self._log.warning(
                "run events not sent yet", extra={"run_id": run_id, "unsent": self.unsent}
            )
            return False
        return True

    def _report_lost(self, run_id: str) -> None:
        """Log how many of the run's events were dropped (once, at its flush)."""
        if lost := self._lost.pop(run_id, 0):
            self._log.warning("run events lost", extra={"run_id": run_id, "lost": lost})
