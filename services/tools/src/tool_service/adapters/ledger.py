"""Adapter: the idempotency ledger in SQLite (default) or PostgreSQL.

One row per idempotency key: which tool, a digest of the arguments, when the
invocation started, and — once it finished — its result. Claiming a key is an
`INSERT ... ON CONFLICT DO NOTHING`, so two concurrent callers with the same
key cannot both act: the database decides which one claimed it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from agentrt_kit.sql import SqlDatabase
from tool_service.application.ports import LedgerEntry
from tool_service.domain.tools import ToolResult

MIGRATIONS = [
    [
        "CREATE TABLE IF NOT EXISTS {tool_ledger} ("
        " idempotency_key TEXT PRIMARY KEY,"
        " tool TEXT NOT NULL,"
        " digest TEXT NOT NULL,"
        " started_at DOUBLE PRECISION NOT NULL,"
        " completed_at DOUBLE PRECISION,"
        " result TEXT)",
        "CREATE INDEX IF NOT EXISTS tool_ledger_started ON {tool_ledger} (started_at)",
    ],
]


class SqlLedger:
    """Ledger port over `SqlDatabase`."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        self.table = db.table("tool_ledger")
        db.migrate("tool_ledger", MIGRATIONS)

    def claim(self, key: str, tool: str, digest: str) -> LedgerEntry | None:
        """Claim `key`; None when claimed now, else the recorded entry."""
        ph = self.db.ph
        now = datetime.now(UTC).timestamp()
        with self.db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (idempotency_key, tool, digest, started_at) "  # noqa: S608
                f"VALUES ({ph}, {ph}, {ph}, {ph}) ON CONFLICT (idempotency_key) DO NOTHING",
                (key, tool, digest, now),
            )
            if cursor.rowcount == 1:
                return None
            cursor.execute(
                f"SELECT tool, digest, started_at, result FROM {self.table} "  # noqa: S608
                f"WHERE idempotency_key = {ph}",
                (key,),
            )
            row = cursor.fetchone()
        if row is None:  # released between our insert and select: try again
            return self.claim(key, tool, digest)
        recorded_tool, recorded_digest, started_at, result = row
        return LedgerEntry(
            key=key,
            tool=recorded_tool,
            digest=recorded_digest,
            started_at=datetime.fromtimestamp(started_at, UTC),
            result=ToolResult.from_document(json.loads(result)) if result else None,
        )

    def complete(self, key: str, result: ToolResult) -> None:
        """Record the result of the invocation that claimed `key`."""
        ph = self.db.ph
        with self.db.transaction() as cursor:
            cursor.execute(
                f"UPDATE {self.table} SET result = {ph}, completed_at = {ph} "  # noqa: S608
                f"WHERE idempotency_key = {ph}",
                (json.dumps(result.to_document()), datetime.now(UTC).timestamp(), key),
            )

    def release(self, key: str) -> None:
        """Forget a claim that never acted."""
        with self.db.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE idempotency_key = {self.db.ph} "  # noqa: S608
                "AND result IS NULL",
                (key,),
            )

    def purge(self, older_than: datetime) -> int:
        """Drop entries that started before `older_than`; returns how many."""
        with self.db.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE started_at < {self.db.ph}",  # noqa: S608
                (older_than.timestamp(),),
            )
            return int(cursor.rowcount)
