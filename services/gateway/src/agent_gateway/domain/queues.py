"""Domain: the queues' figures, as `GET /v1/queues`, `GET /v1/health` and `/metrics` show them.

Background runs (`run`) and run webhooks (`webhook`) each wait in a queue that every
executor replica takes from, on the broker `AGENTRT_QUEUE_BACKEND` names; any replica
answers for all of them. The figures describe the queues, not this gateway: health
reports the run queue's without judging them (a deep queue is load, not a fault).
A figure the broker does not tell (RabbitMQ without its management API) is None, and
so is every figure of a queue whose broker could not be asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RUN_QUEUE = "run"
# The figures, in the order bodies and metrics list them.
FIGURES = ("depth", "pending", "oldest_age_seconds", "redelivered", "dead_letters")


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """How one queue is doing, as an executor replica sees it (None: a figure not known)."""

    name: str  # run | webhook
    backend: str  # the broker: nats | redis | rabbitmq
    available: bool  # the broker could be asked
    error: str = ""  # why it could not be
    depth: int | None = None  # messages waiting or in progress, not yet acknowledged
    pending: int | None = None  # messages waiting for a first delivery
    oldest_age_seconds: float | None = None  # age of the oldest one waiting for a delivery
    redelivered: int | None = None  # deliveries in progress that are redeliveries
    dead_letters: int | None = None  # messages given up and still kept

    def figures(self) -> dict[str, int | float | None]:
        """The figures by name (`FIGURES`), None where not known."""
        return {name: getattr(self, name) for name in FIGURES}


@dataclass(frozen=True, slots=True)
class Queues:
    """Every queue's figures, with what the executor replica that answered says of itself."""

    bus_backend: str  # where run events, cancel requests and run endings travel: nats | redis
    free_slots: int  # free run slots on the replica that answered
    queues: tuple[QueueFigures, ...]  # the run queue first

    def named(self, name: str) -> QueueFigures | None:
        """The queue called `name`, if the executor has it."""
        return next((queue for queue in self.queues if queue.name == name), None)


def queue_status(queue: QueueFigures) -> str:
    """`ok`, or `unavailable` when its broker could not be asked."""
    return "ok" if queue.available else "unavailable"


def queues_body(found: Queues) -> dict[str, Any]:
    """The body of `GET /v1/queues`: each queue with its status; `error` only when unavailable."""

    def one(queue: QueueFigures) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": queue.name,
            "backend": queue.backend,
            "status": queue_status(queue),
        }
        if not queue.available:
            body["error"] = queue.error or "the broker could not be asked"
        return {**body, **queue.figures()}

    return {
        "bus_backend": found.bus_backend,
        "free_slots": found.free_slots,
        "queues": [one(queue) for queue in found.queues],
    }


def health_queue(found: Queues | None) -> dict[str, Any]:
    """The `queue` object of `/v1/health`: the run queue's figures.

    Only `status` when the executor could not be asked (or named no run queue); else
    every key, a figure not known being None. The broker's error text is left to the
    admin route `GET /v1/queues`: health is read by every role.
    """
    run = None if found is None else found.named(RUN_QUEUE)
    if found is None or run is None:
        return {"status": "unavailable"}
    return {
        "status": queue_status(run),
        "backend": run.backend,
        "bus_backend": found.bus_backend,
        **run.figures(),
        "free_slots": found.free_slots,
    }
