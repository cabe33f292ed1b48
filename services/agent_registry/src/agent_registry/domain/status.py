"""Domain: the agent status lifecycle.

created → active ⇄ inactive; any status → error; error → active | inactive.
Setting the status an agent already has is a no-op, not a transition.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where an agent is in its lifecycle."""

    CREATED = "created"
    ACTIVE = "active"
    INACTIVE = "inactive"
    ERROR = "error"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.ACTIVE, Status.ERROR}),
    Status.ACTIVE: frozenset({Status.INACTIVE, Status.ERROR}),
    Status.INACTIVE: frozenset({Status.ACTIVE, Status.ERROR}),
    Status.ERROR: frozenset({Status.ACTIVE, Status.INACTIVE}),
}


def can_transition(current: Status, requested: Status) -> bool:
    """True when the lifecycle allows moving from `current` to `requested`."""
    return requested in TRANSITIONS[current]
