"""The gateway's refusals: the kit's error hierarchy, with the reasons HTTP clients read.

The application raises these (never HTTP types); `adapters.http_errors` maps each to
an HTTP status and the body of the route's dialect (COMPAT or OpenAI). A `reason`
becomes the COMPAT code where it names one (`AGENT_NOT_FOUND`, `RATE_LIMIT_EXCEEDED`,
...); `metadata` becomes `details`.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentrt_kit.errors import (
    AgentrtError,
    ErrorCode,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)


class RunFailed(AgentrtError):
    """A run started but ended without an answer; `reason` is the run's error code.

    TIMEOUT, PROVIDER_ERROR, OUTPUT_INVALID, EXECUTOR_LOST, LIMIT_EXCEEDED, ...: the
    HTTP status follows from it (`adapters.http_errors`).
    """

    code = ErrorCode.INTERNAL
    default_reason = "EXECUTION_ERROR"


def agent_not_found(agent_id: str) -> NotFound:
    """No such agent — or one the caller's owner does not own (indistinguishable)."""
    return NotFound(f"agent {agent_id[:200]!r} not found", reason="AGENT_NOT_FOUND")


def bad_field(
    field: str, description: str, message: str | None = None, *, reason: str = ""
) -> InvalidArgument:
    """Bad input naming one field (a path such as `body.messages.0.content`)."""
    return InvalidArgument(
        message or f"{field}: {description}",
        reason=reason or None,
        violations=[FieldViolation(field, description)],
    )


def bad_fields(violations: list[FieldViolation], *, reason: str = "") -> InvalidArgument:
    """Bad input naming every bad field."""
    named = "; ".join(f"{v.field}: {v.description}" for v in violations[:3])
    return InvalidArgument(
        f"invalid request: {named}"[:1000], reason=reason or None, violations=violations
    )


def forbidden(message: str, *, field: str = "", description: str = "") -> PermissionDenied:
    """The caller's role or owner does not allow this (naming the field that asked it)."""
    violations = [FieldViolation(field, description)] if field else []
    return PermissionDenied(message, reason="FORBIDDEN", violations=violations)


def over_limit(message: str, facts: Mapping[str, str]) -> ResourceExhausted:
    """A per-caller limit was reached (answered 429 with `Retry-After`)."""
    return ResourceExhausted(message, reason="RATE_LIMIT_EXCEEDED", metadata=facts)
