"""Adapter: in-memory twins of the ledger and the audit sink, for unit tests."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from tool_service.application.ports import AuditEntry, LedgerEntry
from tool_service.domain.tools import ToolResult


class InMemoryLedger:
    """Ledger port in a dict."""

    def __init__(self) -> None:
        self.entries: dict[str, LedgerEntry] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, tool: str, digest: str) -> LedgerEntry | None:
        """Claim `key` or return what is recorded."""
        with self._lock:
            if key in self.entries:
                return self.entries[key]
            self.entries[key] = LedgerEntry(key, tool, digest, datetime.now(UTC), None)
            return None

    def complete(self, key: str, result: ToolResult) -> None:
        """Record the result."""
        with self._lock:
            entry = self.entries[key]
            self.entries[key] = LedgerEntry(key, entry.tool, entry.digest, entry.started_at, result)

    def release(self, key: str) -> None:
        """Forget an unfinished claim."""
        with self._lock:
            if key in self.entries and self.entries[key].result is None:
                del self.entries[key]


class ListAuditSink:
    """Audit sink that keeps records in a list."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        """Keep the record."""
        self.entries.append(entry)
