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
import logging

from agent_registry.application.ports import EventPublisher, OutboundEvent, PositionStore
from agent_registry.application.registry import AgentRegistry
from agent_registry.domain.agent import Agent, describe
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
    ) -> None:
        self.app = app
        self.publisher = publisher
        self.positions = positions
        self.run_blocking = runner
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.linger = linger
        self.tracking_name = f"{app.name}.relay"
        self.wake = asyncio.Event()
        self._position: int | None = None

    async def resync(self) -> int:
        """Position to resume from: the later of the tracked one and the bus's last."""
        tracked = await self.run_blocking(self.positions.get_position, self.tracking_name)
        published = await self.publisher.last_position()
        self._position = max(tracked, published)
        return self._position

    def _batch(self, after: int) -> tuple[list[OutboundEvent], int]:
        notifications = self.app.recorder.select_notifications(
            start=after, limit=self.batch_size, inclusive_of_start=False
        )
        events = []
        for n in notifications:
            event = self.app.mapper.to_domain_event(n)
            if isinstance(event, Agent.Event):
                events.append(OutboundEvent(f"{self.app.name}:{n.id}", n.id, describe(event)))
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
        await self.run_blocking(self.positions.advance_position, self.tracking_name, last)
        self._position = last
        return last - position

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set, backing off while the bus is unavailable."""
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
