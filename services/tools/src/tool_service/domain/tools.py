"""Domain: what a tool is, what an invocation carries, and what it returns.

A tool either returns a `ToolResult` or raises `ToolFailure`: a failure the agent
can read and act on (file missing, response too large, ...). Refusals of the
request itself (bad arguments, a path outside the workspace, a blocked URL) are
errors of the service (`tool_service.errors`), not tool results.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class SideEffect(StrEnum):
    """How repeating a tool call behaves."""

    READ_ONLY = "read_only"
    IDEMPOTENT = "idempotent"
    AT_MOST_ONCE = "at_most_once"


@dataclass(frozen=True)
class ToolSpec:
    """The description a tool publishes."""

    name: str
    description: str
    arguments_schema: Mapping[str, Any]
    side_effect: SideEffect
    version: str = "1"
    source: str = "builtin"


@dataclass(frozen=True)
class InvocationContext:
    """Who calls, for which run, in which workspace, under which idempotency key."""

    agent_id: str = ""
    task_id: str = ""
    run_id: str = ""
    workspace: str = ""
    idempotency_key: str = ""


@dataclass(frozen=True)
class Artifact:
    """Something a tool produced that outlives the call (a saved file)."""

    kind: str
    location: str
    media_type: str = ""
    size_bytes: int = 0


@dataclass(frozen=True)
class ToolResult:
    """What a tool returns: text for the agent, structured data, artifacts, or a failure."""

    content: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    error_code: str = ""
    error_message: str = ""
    # Bytes read or written, for the audit record (never the bytes themselves).
    bytes: int = 0

    @property
    def failed(self) -> bool:
        """True when the tool ran and failed."""
        return bool(self.error_code)

    def to_document(self) -> dict[str, Any]:
        """JSON-ready form (the idempotency ledger stores results this way)."""
        return {
            "content": self.content,
            "data": dict(self.data),
            "artifacts": [vars(a) for a in self.artifacts],
            "error_code": self.error_code,
            "error_message": self.error_message,
            "bytes": self.bytes,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ToolResult:
        """Inverse of `to_document`."""
        return cls(
            content=doc["content"],
            data=doc["data"],
            artifacts=tuple(Artifact(**a) for a in doc["artifacts"]),
            error_code=doc["error_code"],
            error_message=doc["error_message"],
            bytes=doc.get("bytes", 0),
        )


class ToolFailure(Exception):
    """The tool ran and failed in a way the agent can understand; becomes a ToolResult."""

    def __init__(self, code: str, message: str, *, bytes_used: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.bytes_used = bytes_used

    def result(self) -> ToolResult:
        """The failure as a tool result."""
        return ToolResult(error_code=self.code, error_message=self.message, bytes=self.bytes_used)
