"""Application: the relay that publishes stored agent events to the message bus.

No dual writes: commands only append to the event store. The relay follows the
store's notification log from its tracked position and publishes each agent
event; the position is advanced after the bus acknowledged the batch. Nothing
is lost while the bus is down (the events wait in the store), and nothing is
published twice: every event carries a stable id (`<app>:<position>`) that the
bus de-duplicates, and on (re)connection the relay also resumes after the last
position the bus already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agent_registry.application.ports import EventPublisher, OutboundEvent, PositionStore
from agent_registry.application.registry import AgentRegistry, agent_events
from agent_registry.domain.agent import describe
from agentrt_kit.concurrency import BlockingRunner, wait_for_any
from agentrt_kit.resilience import jittered_backoff

log = logging.getLogger(__name__)


class Relay:
    """Publishes the registry's agent events, in log order, exactly once per event id."""

    def __init__(
        self,
        app: AgentRegistry,
        publisher: EventPublisher,
        positions: PositionStore,
        runner: BlockingRunner,
        *,
        batch_size: int = 256,
        poll_interval: float = 0.5,
        linger: float = 0.02,
        track_interval: float = 1.0,
    ) -> None:
        self.app = app
        self.publisher = publisher
        self.positions = positions
        self.run_blocking = runner
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.linger = linger
        self.track_interval = track_interval
        self.tracking_name = f"{app.name}.relay"
        self.wake = asyncio.Event()
        self._position: int | None = None
        self._tracked = 0
        self._tracked_at = 0.0

    async def resync(self) -> int:
        """Position to resume from: the later of the tracked one and the bus's last."""
        tracked = await self.run_blocking(self.positions.get_position, self.tracking_name)
        published = await self.publisher.last_position()
        self._position = max(tracked, published)
        self._tracked = tracked
        return self._position

    async def record_position(self) -> None:
        """Store the position reached (done at most every `track_interval` while busy).

        Recording lazily is safe: a relay that restarts resumes after the last
        position the bus holds, which is never behind what was published.
        """
        if self._position is not None and self._position > self._tracked:
            position = self._position
            await self.run_blocking(self.positions.advance_position, self.tracking_name, position)
            self._tracked = position
        self._tracked_at = time.monotonic()

    def _batch(self, after: int) -> tuple[list[OutboundEvent], int]:
        notifications = self.app.recorder.select_notifications(
            start=after, limit=self.batch_size, inclusive_of_start=False
        )
        events = [
            OutboundEvent(f"{self.app.name}:{position}", position, describe(event))
            for position, event in agent_events(self.app, notifications)
        ]
        return events, (notifications[-1].id if notifications else after)

    async def publish_pending(self) -> int:
        """Publish one batch after the current position.

        Returns:
            How many notifications the batch covered (0 when there was nothing new).
        """
        position = self._position if self._position is not None else await self.resync()
        events, last = await self.run_blocking(self._batch, position)
        if last == position:
            return 0
        if events:
            await self.publisher.publish(events)
        self._position = last
        if time.monotonic() - self._tracked_at >= self.track_interval:
            await self.record_position()
        return last - position

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set, backing off while the bus is unavailable."""
        try:
            await self._run(stop)
        finally:
            with contextlib.suppress(Exception):
                await self.record_position()

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = jittered_backoff(0.1, 5.0)
        while not stop.is_set():
            try:
                if await self.publish_pending():
                    backoff = jittered_backoff(0.1, 5.0)
                    continue
                delay = self.poll_interval
            except Exception as e:
                log.warning("relay paused", extra={"error": str(e)})
                self._position = None  # resync with the bus once it is back
                delay = next(backoff)
            self.wake.clear()
            if await wait_for_any(self.wake, stop, timeout=delay) and not stop.is_set():
                # Woken by a write: let a burst gather so it goes out as one batch.
                await wait_for_any(stop, timeout=self.linger)
