"""The error hierarchy every agentrt service raises.

Pure Python (no gRPC import), so domain and application code can raise these;
`agentrt_kit.grpc.status` maps them to gRPC status codes with google.rpc rich
details, and back again on the client side. Where a meaning overlaps a stdlib
error the class inherits it too, so `except LookupError` still works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

ERROR_DOMAIN = "agentrt"


class ErrorCode(StrEnum):
    """Status codes, named as gRPC names them."""

    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNIMPLEMENTED = "UNIMPLEMENTED"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: a path such as `spec.template_config.steps[0].name` and why."""

    field: str
    description: str


class AgentrtError(Exception):
    """Base of every error a service reports to its callers.

    Attributes:
        message: Human-readable text, safe to show to the caller.
        reason: Stable machine-readable code (google.rpc.ErrorInfo.reason).
        violations: Field violations, for bad input.
        metadata: Extra string facts for ErrorInfo (never secrets).
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: Iterable[FieldViolation] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        self.metadata: dict[str, str] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(AgentrtError, ValueError):
    """The caller sent bad input; `violations` names each bad field."""

    code = ErrorCode.INVALID_ARGUMENT
    default_reason = "VALIDATION_ERROR"


class NotFound(AgentrtError, LookupError):
    """What the caller named does not exist."""

    code = ErrorCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(AgentrtError):
    """What the caller tried to create exists already."""

    code = ErrorCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(AgentrtError):
    """The system is not in a state in which the operation is allowed."""

    code = ErrorCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(AgentrtError):
    """A concurrency conflict: a stale version or a lost race; retry after re-reading."""

    code = ErrorCode.ABORTED
    default_reason = "CONFLICT"


class OutOfRange(AgentrtError):
    """A value is valid but past what exists (a page token beyond the end, ...)."""

    code = ErrorCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class PermissionDenied(AgentrtError, PermissionError):
    """The caller is known but not allowed to do this."""

    code = ErrorCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(AgentrtError):
    """The caller did not prove who it is."""

    code = ErrorCode.UNAUTHENTICATED
    default_reason = "INVALID_TOKEN"


class ResourceExhausted(AgentrtError):
    """A limit or quota was reached."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(AgentrtError, TimeoutError):
    """The operation did not finish in time."""

    code = ErrorCode.DEADLINE_EXCEEDED
    default_reason = "TIMEOUT"


class Unavailable(AgentrtError, ConnectionError):
    """A dependency is down; the call may succeed if retried later."""

    code = ErrorCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Cancelled(AgentrtError):
    """The operation was cancelled, usually by the caller."""

    code = ErrorCode.CANCELLED
    default_reason = "CANCELLED"


class Unimplemented(AgentrtError, NotImplementedError):
    """The service does not offer this operation."""

    code = ErrorCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(AgentrtError):
    """A bug or an unexpected failure; details are logged, never sent."""

    code = ErrorCode.INTERNAL
    default_reason = "INTERNAL"


ERROR_CLASSES: dict[ErrorCode, type[AgentrtError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def invalid(field: str, description: str, message: str | None = None) -> InvalidArgument:
    """Shorthand for an InvalidArgument about one field."""
    return InvalidArgument(
        message or f"{field}: {description}", violations=[FieldViolation(field, description)]
    )
