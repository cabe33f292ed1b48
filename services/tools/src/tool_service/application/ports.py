"""Application ports: the filesystem, the web, the ledger and the audit trail, as Protocols.

Each has a real adapter (`tool_service.adapters`) and, where tests need one, an
in-memory twin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tool_service.domain.sandbox import AgentEvent, Execution, Program, SandboxStatus
from tool_service.domain.sandbox import Limits as SandboxLimits
from tool_service.domain.tools import InvocationContext, ToolResult, ToolSpec


@dataclass(frozen=True)
class Entry:
    """One directory entry of a workspace."""

    name: str
    kind: str  # file | directory | symlink | other
    size_bytes: int


class Workspace(Protocol):
    """One agent's workspace directory; every path is relative to it and stays inside it.

    Paths are given as validated name sequences (`tool_service.domain.paths.path_parts`).
    Refusals (links, escapes) raise `PathRefused`; expected failures raise `ToolFailure`.
    """

    def read_bytes(self, parts: Sequence[str], max_bytes: int) -> bytes:
        """The file's content (ToolFailure NOT_FOUND, NOT_A_FILE, TOO_LARGE)."""
        ...

    def write_bytes(self, parts: Sequence[str], data: bytes, overwrite: bool) -> None:
        """Create (or replace, with `overwrite`) a file, creating its directories."""
        ...

    def delete(self, parts: Sequence[str]) -> None:
        """Remove a file (ToolFailure NOT_FOUND, IS_A_DIRECTORY)."""
        ...

    def list(self, parts: Sequence[str], limit: int) -> list[Entry]:
        """Entries of a directory, sorted by name, at most `limit`."""
        ...

    def exists(self, parts: Sequence[str]) -> bool:
        """Whether anything exists at the path (links are not followed)."""
        ...


class Workspaces(Protocol):
    """Opens workspaces by name (created on first use)."""

    def open(self, name: str) -> AbstractContextManager[Workspace]:
        """The workspace called `name` (one or two validated segments)."""
        ...


@dataclass(frozen=True)
class Fetched:
    """A fetched response, body already capped."""

    url: str
    status: int
    content_type: str
    charset: str | None
    body: bytes


class Fetcher(Protocol):
    """Fetches URLs under the network policy (raises UrlBlocked or ToolFailure)."""

    async def fetch(self, url: str, headers: Mapping[str, str], follow_redirects: bool) -> Fetched:
        """GET the URL."""
        ...


@dataclass(frozen=True)
class LedgerEntry:
    """What the idempotency ledger holds for a key."""

    key: str
    tool: str
    digest: str
    started_at: datetime
    result: ToolResult | None  # None while the invocation has not completed


class Ledger(Protocol):
    """The record of at-most-once invocations, keyed by idempotency key."""

    def claim(self, key: str, tool: str, digest: str) -> LedgerEntry | None:
        """Claim the key; None when claimed now, else what is already recorded."""
        ...

    def complete(self, key: str, result: ToolResult) -> None:
        """Record the result of a claimed invocation."""
        ...

    def release(self, key: str) -> None:
        """Forget a claim whose invocation was refused before it acted."""
        ...


@dataclass(frozen=True)
class AuditEntry:
    """One invocation, as audited: never arguments, contents or secrets."""

    tool: str
    context: InvocationContext
    outcome: str  # succeeded | failed | refused | replayed | cancelled | error
    detail: str
    duration_ms: int
    bytes: int
    request_id: str
    actor: str


class AuditSink(Protocol):
    """Where audit records go (must not block the invocation)."""

    def record(self, entry: AuditEntry) -> None:
        """Queue one record."""
        ...


class Tool(Protocol):
    """A tool the service can run."""

    spec: ToolSpec

    async def run(self, arguments: Mapping[str, Any], env: Any) -> ToolResult:
        """Run with validated arguments in `env` (a ToolEnv)."""
        ...


class AgentCodeRun(Protocol):
    """One call of an agent's code in a sandbox."""

    def events(self) -> AsyncIterator[AgentEvent]:
        """Progress and tool calls as they come; `Finished` last (the sandbox is gone by then)."""
        ...

    async def answer(self, call_id: str, result: Mapping[str, Any]) -> None:
        """Give the code the result of its tool call `call_id`."""
        ...


class Sandbox(Protocol):
    """Runs untrusted programs, each in a fresh sandbox (`tool_service.adapters.sandbox`)."""

    status: SandboxStatus

    async def run(self, program: Program) -> Execution:
        """Run a program to its end (raises SandboxUnavailable when none can run)."""
        ...

    def agent(
        self,
        language: str,
        code: str,
        entry_point: str,
        start: Mapping[str, Any],
        limits: SandboxLimits,
    ) -> AgentCodeRun:
        """An agent's code, called once with `start` ({messages, agent})."""
        ...
