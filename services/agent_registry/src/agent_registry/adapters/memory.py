"""Adapter: in-memory twins of the application ports, for unit tests and embedding.

They behave like the real adapters (same scenario suites run against both),
only nothing survives the process.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Collection, Sequence

from agent_registry.application.ports import ListFilter, OutboundEvent
from agent_registry.application.records import AgentRecord
from agent_registry.domain.executors import ExecutorFleet, ExecutorReport, fleet_of
from agent_registry.domain.templates import TemplateDescriptor
from agent_registry.errors import CatalogUnavailable


class InMemoryTemplateCatalog:
    """Descriptors held in a dict; `available=False` simulates an unreachable catalogue."""

    def __init__(
        self,
        descriptors: Sequence[TemplateDescriptor] = (),
        executors: Sequence[ExecutorReport] = (),
    ) -> None:
        self._latest: dict[str, TemplateDescriptor] = {}
        self._versions: dict[tuple[str, str], TemplateDescriptor] = {}
        self._executors = {r.executor_id: r for r in executors}
        self.available = True
        for d in descriptors:
            self.put(d)

    def put(self, descriptor: TemplateDescriptor) -> None:
        """Publish a descriptor (it becomes the latest of its template)."""
        self._latest[descriptor.id] = descriptor
        self._versions[(descriptor.id, descriptor.version)] = descriptor

    def put_executor(self, report: ExecutorReport) -> None:
        """Publish an executor's entry (replacing its earlier one)."""
        self._executors[report.executor_id] = report

    def executors(self) -> ExecutorFleet:
        """What every executor can run, as of now."""
        return fleet_of(self._executors.values(), time.time())

    def get(self, template_id: str, version: str | None) -> TemplateDescriptor | None:
        """The descriptor, latest when `version` is None."""
        if not self.available:
            raise CatalogUnavailable("template catalogue unavailable")
        if version is None:
            return self._latest.get(template_id)
        return self._versions.get((template_id, version))


class InMemoryReadModel:
    """Listing rows and named positions in dicts."""

    def __init__(self, app_name: str = "AgentRegistry") -> None:
        self._rows: dict[str, AgentRecord] = {}
        self._positions: dict[str, int] = {}
        self._lock = threading.Lock()
        self.app_name = app_name

    def position(self) -> int:
        """The last notification id applied to the listing."""
        return self._positions.get(self.app_name, 0)

    def load(self, agent_ids: Collection[str]) -> dict[str, AgentRecord]:
        """Copies of the stored records of these agents."""
        with self._lock:
            return {i: copy.deepcopy(self._rows[i]) for i in agent_ids if i in self._rows}

    def save(self, records: Sequence[AgentRecord], position: int) -> bool:
        """Store records and advance the position, unless already past it."""
        with self._lock:
            if self._positions.get(self.app_name, 0) >= position:
                return False
            for r in records:
                self._rows[r.agent_id] = copy.deepcopy(r)
            self._positions[self.app_name] = position
            return True

    def query(self, where: ListFilter, after_seq: int, limit: int) -> list[AgentRecord]:
        """Live matching records after `after_seq`, in seq order."""
        with self._lock:
            rows = sorted(
                (
                    r
                    for r in self._rows.values()
                    if not r.deleted
                    and r.seq > after_seq
                    and (not where.template_id or r.spec.get("template_id") == where.template_id)
                    and (not where.status or r.status == where.status)
                    and (not where.owner_id or r.spec.get("owner_id") == where.owner_id)
                ),
                key=lambda r: r.seq,
            )
            return [copy.deepcopy(r) for r in rows[:limit]]

    def get_position(self, name: str) -> int:
        """The position recorded under `name`."""
        return self._positions.get(name, 0)

    def advance_position(self, name: str, position: int) -> None:
        """Record `position` unless a later one is recorded."""
        with self._lock:
            self._positions[name] = max(self._positions.get(name, 0), position)


class InMemoryPublisher:
    """Collects published events, de-duplicating by event id like JetStream does."""

    def __init__(self) -> None:
        self.events: list[OutboundEvent] = []
        self._ids: set[str] = set()
        self.available = True

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Append the events not seen before."""
        if not self.available:
            from agentrt_kit.errors import Unavailable

            raise Unavailable("bus unavailable")
        for e in events:
            if e.event_id not in self._ids:
                self._ids.add(e.event_id)
                self.events.append(e)

    async def last_position(self) -> int:
        """Position of the last event held."""
        return self.events[-1].position if self.events else 0
