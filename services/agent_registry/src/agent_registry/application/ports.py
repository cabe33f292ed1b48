"""Application ports: what the registry needs from the outside, as Protocols.

Each port has an in-memory twin (`agent_registry.adapters.memory`) for unit
tests and one real adapter; one scenario suite runs against all of them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent_registry.application.records import AgentRecord
from agent_registry.domain.agent import HistoryEntry
from agent_registry.domain.executors import ExecutorFleet
from agent_registry.domain.templates import TemplateDescriptor


class TemplateCatalog(Protocol):
    """Template descriptors published by executors."""

    def get(self, template_id: str, version: str | None) -> TemplateDescriptor | None:
        """The descriptor (latest when `version` is None), or None when unknown.

        Raises:
            CatalogUnavailable: when the catalogue cannot be read and nothing is cached.
        """
        ...

    def executors(self) -> ExecutorFleet:
        """What every executor can run now: provider ids and run-limit ceilings.

        Never raises: when nothing was published (or cannot be read) the fleet is unknown.
        """
        ...


@dataclass(frozen=True)
class ListFilter:
    """What a listing is restricted to (empty = any)."""

    template_id: str = ""
    status: str = ""
    owner_id: str = ""


class ListingStore(Protocol):
    """The listing read model and its tracking position, in the event store's database."""

    def position(self) -> int:
        """The last notification id applied (0 before the first)."""
        ...

    def load(self, agent_ids: Collection[str]) -> dict[str, AgentRecord]:
        """The stored records of these agents (deleted ones included)."""
        ...

    def save(self, records: Sequence[AgentRecord], position: int) -> bool:
        """Store records and advance the position to `position`, atomically.

        Returns False (storing nothing) when the position already is at or past
        `position`: another replica applied these notifications first.
        """
        ...

    def query(self, where: ListFilter, after_seq: int, limit: int) -> list[AgentRecord]:
        """Live agents matching `where` with seq > after_seq, in seq order."""
        ...


class PositionStore(Protocol):
    """Named positions in the notification log (the relay's progress)."""

    def get_position(self, name: str) -> int:
        """The position recorded under `name` (0 when none)."""
        ...

    def advance_position(self, name: str, position: int) -> None:
        """Record `position` under `name` unless a later one is recorded already."""
        ...


@dataclass(frozen=True)
class OutboundEvent:
    """One agent event to publish, with its position in the notification log."""

    event_id: str
    position: int
    entry: HistoryEntry


class EventPublisher(Protocol):
    """Where agent events go (JetStream)."""

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Publish all, in order, de-duplicated by event id.

        The bus never holds an event after one it lost: what it holds is the log up to
        some position, so resuming after `last_position()` loses nothing.

        Raises:
            Unavailable: when any of them could not be published (none is lost:
                the relay publishes them again).
        """
        ...

    async def last_position(self) -> int:
        """The highest position already published (0 when none or unknown)."""
        ...
