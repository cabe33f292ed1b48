"""Domain: this replica's execution numbers, as `GET /v1/health` reports them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measurement:
    """One execution being timed."""

    stats: ExecutionStats
    started: float = field(default_factory=time.perf_counter)
    failed: bool = False
    finished: bool = False
    _ended: bool = False

    def end(self, *, failed: bool) -> None:
        """Count the execution (once)."""
        if not self._ended:
            self._ended = True
            self.stats._count(time.perf_counter() - self.started, failed)


class ExecutionStats:
    """Executions in flight, done, failed, and their mean time."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.total = 0
        self.errors = 0
        self._seconds = 0.0

    def begin(self) -> Measurement:
        """Start timing an execution."""
        self.in_flight += 1
        return Measurement(self)

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Time the block as one execution; an exception counts it as failed."""
        measured = self.begin()
        try:
            yield measured
        except BaseException:
            measured.failed = True
            raise
        finally:
            measured.end(failed=measured.failed)

    def _count(self, seconds: float, failed: bool) -> None:
        self.in_flight -= 1
        self.total += 1
        self.errors += failed
        self._seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        """The `metrics` object of `/v1/health`."""
        return {
            "active_agents": self.in_flight,
            "total_executions": self.total,
            "average_response_time_ms": round(1000 * self._seconds / self.total, 2)
            if self.total
            else 0.0,
            "error_rate": round(self.errors / self.total, 4) if self.total else 0.0,
        }
