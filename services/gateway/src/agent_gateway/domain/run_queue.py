"""Domain: the run queue's figures, as `GET /v1/health` and `/metrics` report them.

Background runs wait in one queue that every executor replica takes from; any replica
answers for all of it. The figures describe the queue, not this gateway: health reports
them without judging them (a deep queue is load, not a fault).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RunQueue:
    """How the run queue is doing, as an executor replica sees it."""

    backend: str  # the broker: nats
    depth: int  # runs waiting or in progress, not yet acknowledged
    pending: int  # runs waiting for a first delivery
    oldest_age_seconds: float  # age of the oldest run waiting for its first delivery
    redelivered: int  # deliveries in progress that are redeliveries
    dead_letters: int  # runs given up and still kept
    free_slots: int  # free run slots on the replica that answered


def queue_body(queue: RunQueue | None) -> dict[str, Any]:
    """The `queue` object of `/v1/health`: the figures, or that they could not be asked."""
    if queue is None:
        return {"status": "unavailable"}
    return {"status": "ok", **asdict(queue)}
