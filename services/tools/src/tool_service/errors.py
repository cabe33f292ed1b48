"""The tools service's errors: refusals the caller gets as gRPC statuses.

A tool that ran and failed is not one of these: it is a `ToolFailure`
(`tool_service.domain.tools`), returned to the agent as a readable result.
"""

from __future__ import annotations

from agentrt_kit.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    PermissionDenied,
)


class UnknownTool(NotFound):
    """No tool of that name."""

    default_reason = "TOOL_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"no tool named {name!r}", metadata={"tool": name})


class PathOutsideWorkspace(PermissionDenied):
    """A path that is absolute, climbs out, or goes through a link."""

    default_reason = "PATH_OUTSIDE_WORKSPACE"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(
            f"{field}: {reason}",
            violations=[FieldViolation(field, reason)],
            metadata={"field": field},
        )


class UrlBlocked(PermissionDenied):
    """A URL the fetch policy refuses (scheme, userinfo, internal address, deny list)."""

    default_reason = "URL_BLOCKED"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"URL refused: {reason}", metadata={"reason": reason, "url": url[:200]})


class InvocationInProgress(Aborted):
    """Another invocation with the same idempotency key has not finished."""

    default_reason = "INVOCATION_IN_PROGRESS"

    def __init__(self, key: str) -> None:
        super().__init__(
            "an invocation with this idempotency key is still in progress; retry later",
            metadata={"idempotency_key": key[:200]},
        )


class IdempotencyKeyReused(FailedPrecondition):
    """The key was used before for another tool or other arguments."""

    default_reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, key: str) -> None:
        super().__init__(
            "this idempotency key was used for a different tool or different arguments",
            violations=[FieldViolation("context.idempotency_key", "already used differently")],
            metadata={"idempotency_key": key[:200]},
        )


class SandboxUnavailable(FailedPrecondition):
    """No sandbox can run code here (or none for that language)."""

    default_reason = "SANDBOX_UNAVAILABLE"

    def __init__(self, reason: str) -> None:
        super().__init__(f"code cannot run here: {reason}", metadata={"reason": reason[:300]})
