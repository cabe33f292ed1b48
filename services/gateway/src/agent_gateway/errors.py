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
    Unavailable,
)


class RunFailed(AgentrtError):
    """A run started but ended without an answer; `reason` is the run's error code.

    TIMEOUT, PROVIDER_ERROR, OUTPUT_INVALID, EXECUTOR_LOST, LIMIT_EXCEEDED, ...: the
    HTTP status follows from it (`adapters.http_errors`).
    """

    code = ErrorCode.INTERNAL
    default_reason = "EXECUTION_ERROR"


class GatewayStopping(Unavailable):
    """The gateway is stopping and answers a request still waiting now (503).

    A request whose run had started names it (`metadata`: `run_id`, `task_id`): the run
    goes on, to be joined or followed. `retry_joins` says whether sending the request
    again joins that run (it carried an Idempotency-Key) or would start another.
    """

    default_reason = "GATEWAY_STOPPING"

    def __init__(self, run_id: str = "", task_id: str = "", *, retry_joins: bool = False) -> None:
        if not run_id:
            message = "the gateway is stopping; send the request again"
            facts = {}
        else:
            message = (
                f"the gateway is stopping; run {run_id!r} goes on: join it at "
                f"/v1/runs/{run_id}/wait or follow it at /v1/runs/{run_id}/events"
            )
            if retry_joins:
                message += " (sending the request again with its Idempotency-Key joins it too)"
            facts = {"run_id": run_id, "task_id": task_id}
        super().__init__(message, metadata=facts)
        self.run_id = run_id
        self.retry_joins = retry_joins


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


def key_reused(run_id: str) -> InvalidArgument:
    """An Idempotency-Key sent again with another request than the first (answered 422)."""
    return InvalidArgument(
        "the Idempotency-Key was used for another request; send a new key for a new request",
        reason="IDEMPOTENCY_KEY_REUSED",
        violations=[FieldViolation("header.idempotency-key", "was used for another request")],
        metadata={"run_id": run_id},
    )


def agent_key_reused(agent_id: str) -> InvalidArgument:
    """An Idempotency-Key sent again with another agent create than the first (422)."""
    return InvalidArgument(
        "the Idempotency-Key was used for another request; send a new key for a new request",
        reason="IDEMPOTENCY_KEY_REUSED",
        violations=[FieldViolation("header.idempotency-key", "was used for another request")],
        metadata={"agent_id": agent_id},
    )


def forbidden(message: str, *, field: str = "", description: str = "") -> PermissionDenied:
    """The caller's role or owner does not allow this (naming the field that asked it)."""
    violations = [FieldViolation(field, description)] if field else []
    return PermissionDenied(message, reason="FORBIDDEN", violations=violations)


def over_limit(message: str, facts: Mapping[str, str]) -> ResourceExhausted:
    """A per-caller limit was reached (answered 429 with `Retry-After`)."""
    return ResourceExhausted(message, reason="RATE_LIMIT_EXCEEDED", metadata=facts)
