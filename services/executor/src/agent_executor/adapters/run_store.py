"""Adapter: run records in SQLite (default) or PostgreSQL.

One row per run. Admission checks the agent's live-run limit and the session's
turn in the same transaction as the insert — SQLite's `BEGIN IMMEDIATE` and a
PostgreSQL advisory lock on the agent serialise admissions of one agent across
replicas — so no limit is a racy pre-check. A run is live while its executor
renews `heartbeat_at`; runs whose lease lapsed (their executor died) no longer
count and are ended as `EXECUTOR_LOST` by any replica's maintenance. Listings
read newest first by `(created_at, run_id)`, with an index per filter column.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agent_executor.application.ports import Admission
from agent_executor.domain.runs import RunCursor, RunFilter, RunRecord, RunStatus, Usage
from agent_executor.errors import RunExists, SessionBusy, TooManyRuns
from agentrt_kit.sql import SqlDatabase

MIGRATIONS = [
    [
        "CREATE TABLE IF NOT EXISTS {executor_runs} ("
        " run_id TEXT PRIMARY KEY,"
        " agent_id TEXT NOT NULL,"
        " agent_version BIGINT NOT NULL,"
        " task_id TEXT NOT NULL,"
        " context_id TEXT NOT NULL,"
        " session_key TEXT NOT NULL,"
        " executor_id TEXT NOT NULL,"
        " status TEXT NOT NULL,"
        " created_at DOUBLE PRECISION NOT NULL,"
        " started_at DOUBLE PRECISION,"
        " finished_at DOUBLE PRECISION,"
        " heartbeat_at DOUBLE PRECISION NOT NULL,"
        " prompt_tokens BIGINT NOT NULL DEFAULT 0,"
        " completion_tokens BIGINT NOT NULL DEFAULT 0,"
        " tool_calls BIGINT NOT NULL DEFAULT 0,"
        " error_code TEXT NOT NULL DEFAULT '',"
        " error_message TEXT NOT NULL DEFAULT '',"
        " cancel_requested INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS executor_runs_live_by_agent ON {executor_runs} (agent_id)"
        " WHERE status = 'running'",
        "CREATE INDEX IF NOT EXISTS executor_runs_live_by_session ON {executor_runs}"
        " (session_key) WHERE status = 'running'",
    ],
    [
        # Rows from before keep working: no owner known, started once.
        "ALTER TABLE {executor_runs} ADD COLUMN owner_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE {executor_runs} ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
        "CREATE INDEX IF NOT EXISTS executor_runs_newest ON {executor_runs} (created_at, run_id)",
        "CREATE INDEX IF NOT EXISTS executor_runs_by_agent ON {executor_runs}"
        " (agent_id, created_at, run_id)",
        "CREATE INDEX IF NOT EXISTS executor_runs_by_task ON {executor_runs}"
        " (task_id, created_at, run_id)",
        "CREATE INDEX IF NOT EXISTS executor_runs_by_owner ON {executor_runs}"
        " (owner_id, created_at, run_id)",
    ],
]

COLUMNS = (
    "run_id, agent_id, agent_version, task_id, context_id, session_key, executor_id, status,"
    " created_at, started_at, finished_at, prompt_tokens, completion_tokens, tool_calls,"
    " error_code, error_message, owner_id, attempts"
)
LIVE = "running"


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


class SqlRunStore:
    """The `RunStore` port over `SqlDatabase`."""

    def __init__(self, db: SqlDatabase, *, lease_seconds: float = 60.0) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.table = db.table("executor_runs")
        db.migrate("executor_runs", MIGRATIONS)

    def _record(self, row: Sequence[Any]) -> RunRecord:
        return RunRecord(
            run_id=row[0],
            agent_id=row[1],
            agent_version=int(row[2]),
            task_id=row[3],
            context_id=row[4],
            session_key=row[5],
            executor_id=row[6],
            status=RunStatus(row[7]),
            created_at=_dt(row[8]) or datetime.fromtimestamp(0, UTC),
            started_at=_dt(row[9]),
            finished_at=_dt(row[10]),
            usage=Usage(int(row[11]), int(row[12])),
            tool_calls=int(row[13]),
            error_code=row[14],
            error_message=row[15],
            owner_id=row[16],
            attempts=int(row[17]),
        )

    def admit(self, record: RunRecord, admission: Admission) -> None:
        """Record a new running run if the agent's limit and the session allow it."""
        ph, t = self.db.ph, self.table
        now = record.created_at.timestamp()
        live_after = now - admission.lease_seconds
        with self.db.transaction() as cur:
            checks = admission.session_key or admission.max_runs_per_agent
            if checks and self.db.dialect == "postgres":
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (record.agent_id,))
            if admission.session_key:
                cur.execute(
                    f"SELECT 1 FROM {t} WHERE session_key = {ph} AND status = '{LIVE}'"  # noqa: S608
                    f" AND heartbeat_at > {ph} LIMIT 1",
                    (admission.session_key, live_after),
                )
                if cur.fetchone() is not None:
                    raise SessionBusy(record.agent_id, record.task_id)
            if admission.max_runs_per_agent:
                cur.execute(
                    f"SELECT count(*) FROM {t} WHERE agent_id = {ph} AND status = '{LIVE}'"  # noqa: S608
                    f" AND heartbeat_at > {ph}",
                    (record.agent_id, live_after),
                )
                row = cur.fetchone()
                if row is not None and int(row[0]) >= admission.max_runs_per_agent:
                    raise TooManyRuns(
                        f"agent {record.agent_id!r} has {admission.max_runs_per_agent} runs in "
                        "progress (its max_concurrent_runs); retry later",
                        reason="AGENT_RUN_LIMIT",
                        metadata={"agent_id": record.agent_id},
                    )
            cur.execute(
                f"INSERT INTO {t} ({COLUMNS}, heartbeat_at) VALUES "  # noqa: S608
                f"({', '.join([ph] * 19)}) ON CONFLICT (run_id) DO NOTHING",
                (
                    record.run_id,
                    record.agent_id,
                    record.agent_version,
                    record.task_id,
                    record.context_id,
                    record.session_key,
                    record.executor_id,
                    record.status.value,
                    now,
                    _ts(record.started_at),
                    None,
                    0,
                    0,
                    0,
                    "",
                    "",
                    record.owner_id,
                    record.attempts,
                    now,
                ),
            )
            if cur.rowcount != 1:
                raise RunExists(record.run_id)

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        finished_at: datetime,
        usage: Usage,
        tool_calls: int,
        error_code: str = "",
        error_message: str = "",
    ) -> bool:
        """Record how a running run ended; False when it had ended already."""
        ph = self.db.ph
        with self.db.transaction() as cur:
            cur.execute(
                f"UPDATE {self.table} SET status = {ph}, finished_at = {ph},"  # noqa: S608
                f" prompt_tokens = {ph}, completion_tokens = {ph}, tool_calls = {ph},"
                f" error_code = {ph}, error_message = {ph}"
                f" WHERE run_id = {ph} AND status = '{LIVE}'",
                (
                    status.value,
                    finished_at.timestamp(),
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    tool_calls,
                    error_code,
                    error_message,
                    run_id,
                ),
            )
            return bool(cur.rowcount == 1)

    def get(self, run_id: str) -> RunRecord | None:
        """The run's record."""
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {COLUMNS} FROM {self.table} WHERE run_id = {self.db.ph}",  # noqa: S608
                (run_id,),
            )
            row = cur.fetchone()
        return self._record(row) if row is not None else None

    def select(self, where: RunFilter, after: RunCursor | None, limit: int) -> list[RunRecord]:
        """Up to `limit` runs matching `where`, newest first, older than `after`."""
        ph = self.db.ph
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("agent_id", where.agent_id),
            ("task_id", where.task_id),
            ("status", where.status.value if where.status else ""),
            ("owner_id", where.owner_id),
        ):
            if value:
                clauses.append(f"{column} = {ph}")
                params.append(value)
        if after is not None:
            at = after.created_at.timestamp()
            # A row comparison is an index bound for both databases (an OR is not): a deep
            # page starts at its cursor instead of rescanning the pages before it.
            clauses.append(f"(created_at, run_id) < ({ph}, {ph})")
            params += [at, after.run_id]
        condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {COLUMNS} FROM {self.table}{condition}"  # noqa: S608 - placeholders only
                f" ORDER BY created_at DESC, run_id DESC LIMIT {ph}",
                (*params, limit),
            )
            rows = cur.fetchall()
        return [self._record(row) for row in rows]

    def request_cancel(self, run_id: str, now: datetime) -> tuple[RunRecord, bool] | None:
        """Flag a live run for cancellation; end it at once when its executor is gone."""
        ph, t = self.db.ph, self.table
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {COLUMNS}, heartbeat_at FROM {t} WHERE run_id = {ph}",  # noqa: S608
                (run_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            record = self._record(row)
            if record.status.terminal:
                return record, False
            if float(row[18]) < now.timestamp() - self.lease_seconds:
                cur.execute(
                    f"UPDATE {t} SET status = '{RunStatus.CANCELLED.value}', finished_at = {ph},"  # noqa: S608
                    f" error_code = 'CANCELLED',"
                    f" error_message = 'cancelled after its executor stopped'"
                    f" WHERE run_id = {ph} AND status = '{LIVE}'",
                    (now.timestamp(), run_id),
                )
                record.status, record.finished_at = RunStatus.CANCELLED, now
                return record, True
            cur.execute(
                f"UPDATE {t} SET cancel_requested = 1 WHERE run_id = {ph}",  # noqa: S608
                (run_id,),
            )
            return record, True

    def heartbeat(self, run_ids: Sequence[str], now: datetime) -> list[str]:
        """Renew leases; the ids among `run_ids` flagged for cancellation."""
        if not run_ids:
            return []
        ph, t = self.db.ph, self.table
        marks = ", ".join([ph] * len(run_ids))
        with self.db.transaction() as cur:
            cur.execute(
                f"UPDATE {t} SET heartbeat_at = {ph}"  # noqa: S608
                f" WHERE status = '{LIVE}' AND run_id IN ({marks})",
                (now.timestamp(), *run_ids),
            )
            cur.execute(
                f"SELECT run_id FROM {t} WHERE cancel_requested = 1"  # noqa: S608
                f" AND status = '{LIVE}' AND run_id IN ({marks})",
                tuple(run_ids),
            )
            return [row[0] for row in cur.fetchall()]

    def expire(self, stale_before: datetime, now: datetime) -> int:
        """End running runs whose lease lapsed; how many."""
        ph = self.db.ph
        with self.db.transaction() as cur:
            cur.execute(
                f"UPDATE {self.table} SET status = '{RunStatus.FAILED.value}',"  # noqa: S608
                f" finished_at = {ph}, error_code = 'EXECUTOR_LOST',"
                f" error_message = 'the executor running it stopped renewing its lease'"
                f" WHERE status = '{LIVE}' AND heartbeat_at < {ph}",
                (now.timestamp(), stale_before.timestamp()),
            )
            return int(cur.rowcount)
