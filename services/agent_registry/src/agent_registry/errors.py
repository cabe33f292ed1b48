"""The registry's errors, each a kit error with a stable reason code.

Raised by the domain and application layers; the kit's error interceptor maps
them to gRPC statuses with rich details (ErrorInfo reason, BadRequest field
violations), and the gateway maps those to HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentrt_kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)


class AgentNotFound(NotFound):
    """No live agent has this id (or it has no such version)."""

    default_reason = "AGENT_NOT_FOUND"

    def __init__(self, agent_id: str, version: int | None = None) -> None:
        at = f" at version {version}" if version else ""
        super().__init__(f"agent {agent_id!r} not found{at}", metadata={"agent_id": agent_id})
        self.agent_id = agent_id


class AgentAlreadyExists(AlreadyExists):
    """A live agent already has this id."""

    default_reason = "AGENT_ALREADY_EXISTS"

    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"agent {agent_id!r} already exists",
            violations=[FieldViolation("agent_id", "an agent with this id exists")],
            metadata={"agent_id": agent_id},
        )


class NameTaken(AlreadyExists):
    """Another live agent has this name (names are unique, case-insensitively)."""

    default_reason = "NAME_TAKEN"

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(
            f"agent name {name!r} is taken",
            violations=[FieldViolation("spec.name", "another agent has this name")],
            metadata={"name": name, "holder": holder},
        )


class IllegalStatusTransition(FailedPrecondition):
    """The status lifecycle does not allow this move."""

    default_reason = "ILLEGAL_STATUS_TRANSITION"

    def __init__(self, agent_id: str, current: str, requested: str) -> None:
        super().__init__(
            f"agent {agent_id!r} cannot go from status {current!r} to {requested!r}",
            metadata={"agent_id": agent_id, "from": current, "to": requested},
        )


class VersionMismatch(Aborted):
    """The caller's expected version is not the agent's version."""

    default_reason = "VERSION_MISMATCH"

    def __init__(self, agent_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"agent {agent_id!r} is at version {actual}, not {expected}",
            metadata={"agent_id": agent_id, "expected": str(expected), "actual": str(actual)},
        )


class ConcurrentModification(Aborted):
    """Writers kept colliding; the command was not applied. Retry it."""

    default_reason = "CONCURRENT_MODIFICATION"


class InvalidAgent(InvalidArgument):
    """The request has bad fields; one violation per bad field."""

    default_reason = "VALIDATION_ERROR"

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        items = list(violations)
        names = list(dict.fromkeys(v.field for v in items))
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        super().__init__(f"invalid fields: {shown}", violations=items)


class CatalogUnavailable(Unavailable):
    """The template catalogue cannot be read, so configs cannot be validated now."""

    default_reason = "TEMPLATE_CATALOG_UNAVAILABLE"
