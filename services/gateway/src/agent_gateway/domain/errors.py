"""Domain: refusals as HTTP clients of the old runtime read them.

The body is `{"error": CODE, "message": text, "details": {...}, "detail": text}`:
the documented form plus `detail`, which old clients read (COMPAT.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentrt_kit.errors import AgentrtError, ErrorCode

# A service's status → (HTTP status, COMPAT code); NOT_FOUND's code depends on the resource.
_BY_CODE: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_ARGUMENT: (400, "VALIDATION_ERROR"),
    ErrorCode.OUT_OF_RANGE: (400, "VALIDATION_ERROR"),
    ErrorCode.ALREADY_EXISTS: (409, "CONFLICT"),
    ErrorCode.ABORTED: (409, "CONFLICT"),
    ErrorCode.FAILED_PRECONDITION: (409, "CONFLICT"),
    ErrorCode.RESOURCE_EXHAUSTED: (429, "RATE_LIMIT_EXCEEDED"),
    ErrorCode.DEADLINE_EXCEEDED: (408, "TIMEOUT_ERROR"),
    ErrorCode.UNAVAILABLE: (503, "SERVICE_UNAVAILABLE"),
    ErrorCode.PERMISSION_DENIED: (403, "FORBIDDEN"),
}


class ApiError(Exception):
    """A refusal with its HTTP status, code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "error": self.code,
            "message": self.message,
            "details": self.details,
            "detail": self.message,
        }


def invalid_token() -> ApiError:
    """401: no token, or not one this gateway accepts (never says which)."""
    return ApiError(
        401,
        "INVALID_TOKEN",
        "a valid X-Runtime-Token or Authorization: Bearer token is required",
        headers={"WWW-Authenticate": "Bearer"},
    )


def from_service(error: AgentrtError, *, not_found: str) -> ApiError:
    """A service's refusal as the HTTP API reports it; `not_found` names the 404 code."""
    if error.code == ErrorCode.NOT_FOUND:
        status, code = 404, not_found
    elif error.reason == "VERSION_MISMATCH":  # If-Match named another version
        status, code = 412, "PRECONDITION_FAILED"
    elif error.code in _BY_CODE:
        status, code = _BY_CODE[error.code]
    else:  # the gateway's own fault (e.g. a service token mismatch): no detail leaks
        return ApiError(500, "INTERNAL_ERROR", "the gateway could not complete the request")
    details: dict[str, Any] = {"reason": error.reason}
    if error.violations:
        details["fields"] = [
            {"field": v.field, "description": v.description} for v in error.violations
        ]
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return ApiError(status, code, error.message, details=details, headers=headers)


def field_error(
    field: str,
    description: str,
    message: str,
    *,
    status: int = 400,
    code: str = "VALIDATION_ERROR",
) -> ApiError:
    """A refusal naming one bad field in `details.fields`, as validation errors do."""
    return ApiError(
        status,
        code,
        message,
        details={"fields": [{"field": field, "description": description}]},
    )


def bad_if_match(value: str) -> ApiError:
    """400: an If-Match that is not one of this API's entity tags."""
    return field_error(
        "header.if-match", f"got {value[:40]!r}", 'If-Match must be an ETag of this API, e.g. "3"'
    )


def agent_not_found(agent_id: str) -> ApiError:
    """404: no such agent — or one the caller's owner does not own (indistinguishable)."""
    return ApiError(
        404,
        "AGENT_NOT_FOUND",
        f"agent {agent_id[:200]!r} not found",
        details={"reason": "AGENT_NOT_FOUND"},
    )
