"""Domain: refusals as HTTP clients of the old runtime read them.

The body is `{"error": CODE, "message": text, "details": {...}, "detail": text}`:
the documented form plus `detail`, which old clients read (COMPAT.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
