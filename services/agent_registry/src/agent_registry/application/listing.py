"""Application: the listing projection and its read-your-writes queries.

The projection follows the registry's notification log and keeps one row per
agent (`AgentRecord`) in the same database, with a tracking position saved in
the same transaction as the rows. It is evolved by the domain events' own
`apply` methods. Several replicas may catch up concurrently: the tracking
position is advanced with a compare-and-set, so a batch is applied once.

Queries are consistent by default: before reading, the projection is brought
up to the log's head as it was when the query arrived, so a list issued right
after a write sees it. `allow_stale` skips that for cheap, eventually
consistent reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable

from agent_registry.application.ports import ListFilter, ListingStore
from agent_registry.application.records import AgentRecord, AgentState
from agent_registry.application.registry import (
    AgentRegistry,
    agent_events,
    decode_token,
    encode_token,
    page_size,
)
from agent_registry.domain.agent import Agent
from agentrt_kit.concurrency import wait_for_any
from agentrt_kit.errors import Unavailable, invalid

log = logging.getLogger(__name__)


def evolve(record: AgentRecord | None, event: Agent.Event, position: int) -> AgentRecord:
    """The record after `event` (found at notification `position`)."""
    record = record or AgentRecord()
    event.apply(record)
    record.version = event.originator_version
    record.updated_at = event.timestamp
    if isinstance(event, Agent.Registered | Agent.Reregistered):
        record.seq = position
    return record


class AgentListing:
    """Keeps the listing rows current and answers list queries from them."""

    def __init__(self, app: AgentRegistry, store: ListingStore, batch_size: int = 500) -> None:
        self.app = app
        self.store = store
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def head(self) -> int:
        """The last notification id in the event log (0 when empty)."""
        return self.app.recorder.max_notification_id() or 0

    def catch_up(self, upto: int | None = None) -> int:
        """Apply notifications until the position reaches `upto` (or the log's end).

        Returns:
            The position reached.
        """
        if upto is not None and (position := self.store.position()) >= upto:
            return position  # the usual case for a list: nothing to apply, no lock taken
        with self._lock:
            position = self.store.position()
            while upto is None or position < upto:
                notifications = self.app.recorder.select_notifications(
                    start=position, limit=self.batch_size, inclusive_of_start=False
                )
                if not notifications:
                    break
                events = agent_events(self.app, notifications)
                records = self.store.load({e.agent_id for _, e in events})
                for notification_id, event in events:
                    records[event.agent_id] = evolve(
                        records.get(event.agent_id), event, notification_id
                    )
                last = notifications[-1].id
                if not self.store.save(list(records.values()), last):
                    # Another replica applied this batch first: carry on from where it got.
                    log.debug("listing batch applied elsewhere", extra={"position": last})
                    position = self.store.position()
                    continue
                position = last
            return position

    def list(
        self, where: ListFilter, size: int = 0, token: str = "", allow_stale: bool = False
    ) -> tuple[list[AgentState], str]:
        """One page of live agents matching `where`, oldest registration first."""
        limit = page_size(size, 50)
        fingerprint = hashlib.sha256(
            json.dumps([where.template_id, where.status, where.owner_id]).encode()
        ).hexdigest()[:12]
        after = 0
        if token:
            try:
                doc = json.loads(decode_token(token))
                after, issued_for = int(doc["after"]), str(doc["filter"])
            except (ValueError, KeyError, TypeError):
                raise invalid("page_token", "is not a token this service issued") from None
            if issued_for != fingerprint:
                raise invalid("page_token", "was issued for other filters")
        if not allow_stale:
            self.catch_up(upto=self.head())
        records = self.store.query(where, after, limit + 1)
        page = records[:limit]
        next_token = ""
        if len(records) > limit:
            next_token = encode_token(json.dumps({"after": page[-1].seq, "filter": fingerprint}))
        return [r.state() for r in page], next_token


async def follow(
    catch_up: Callable[[], Awaitable[object]],
    wake: asyncio.Event,
    stop: asyncio.Event,
    interval: float = 1.0,
    linger: float = 0.05,
) -> None:
    """Call `catch_up` when woken (after local writes) or every `interval` seconds.

    After a wake-up it lingers a moment so a burst of writes is applied in one
    transaction instead of one each. Failures are logged and retried on the next
    round: a projection that falls behind is caught up by the next query anyway.
    """
    while not stop.is_set():
        wake.clear()
        try:
            await catch_up()
        except Unavailable as e:  # the database is down: the next round tries again
            log.warning("projection catch-up paused", extra={"error": str(e)})
        except Exception:
            log.exception("projection catch-up failed")
        if await wait_for_any(wake, stop, timeout=interval) and not stop.is_set():
            await wait_for_any(stop, timeout=linger)
