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

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agent_executor.application.ports import Admission, Claim, ClaimOutcome, Enqueued
from agent_executor.domain.client_tools import ToolCall
from agent_executor.domain.runs import (
    FailureCode,
    RunCursor,
    RunFilter,
    RunOutput,
    RunRecord,
    RunStatus,
    Usage,
)
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
    [
        # Queued runs (StartRun): the request waits here between submit and start.
        "ALTER TABLE {executor_runs} ADD COLUMN queued INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE {executor_runs} ADD COLUMN metadata_json TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE {executor_runs} ADD COLUMN multitask TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE {executor_runs} ADD COLUMN webhook_url TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE {executor_runs} ADD COLUMN output_json TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE {executor_runs} ADD COLUMN finish_reason TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE {executor_runs} ADD COLUMN request TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE {executor_runs} ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE {executor_runs} ADD COLUMN rolled_back INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS executor_runs_unclaimed ON {executor_runs} (heartbeat_at)"
        " WHERE status = 'queued'",
        "CREATE INDEX IF NOT EXISTS executor_runs_pending_by_session ON {executor_runs}"
        " (session_key, created_at, run_id) WHERE status IN ('queued', 'running')",
    ],
]

COLUMNS = (
    "run_id, agent_id, agent_version, task_id, context_id, session_key, executor_id, status,"
    " created_at, started_at, finished_at, prompt_tokens, completion_tokens, tool_calls,"
    " error_code, error_message, owner_id, attempts, queued, metadata_json, multitask,"
    " webhook_url, output_json, finish_reason, rolled_back"
)
N_COLUMNS = COLUMNS.count(",") + 1
LIVE = "running"
QUEUED = "queued"


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _output(text: str) -> RunOutput | None:
    if not text:
        return None
    data = json.loads(text)
    calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in data.get("tool_calls", ()))
    return RunOutput(data.get("content", ""), calls)


def _output_json(output: RunOutput | None) -> str:
    if output is None:
        return ""
    calls = [{"id": c.id, "name": c.name, "arguments": c.arguments_json} for c in output.tool_calls]
    return json.dumps({"content": output.content, "tool_calls": calls})


def _row_values(
    record: RunRecord, heartbeat_at: float, request: str = "", fingerprint: str = ""
) -> tuple[Any, ...]:
    """A new row: the columns of COLUMNS, then heartbeat_at, request and fingerprint."""
    return (
        record.run_id,
        record.agent_id,
        record.agent_version,
        record.task_id,
        record.context_id,
        record.session_key,
        record.executor_id,
        record.status.value,
        record.created_at.timestamp(),
        _ts(record.started_at),
        None,
        0,
        0,
        0,
        "",
        "",
        record.owner_id,
        record.attempts,
        int(record.queued),
        json.dumps(record.metadata, sort_keys=True),
        record.multitask_strategy,
        record.webhook_url,
        "",
        "",
        0,
        heartbeat_at,
        request,
        fingerprint,
    )


def _fingerprint(record: RunRecord, request: str) -> str:
    """What makes two StartRun requests the same one (an idempotent retry)."""
    parts = (
        request,
        record.agent_id,
        json.dumps(record.metadata, sort_keys=True),
        record.webhook_url,
        record.multitask_strategy,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class SqlRunStore:
    """The `RunStore` port over `SqlDatabase`."""

    def __init__(self, db: SqlDatabase, *, lease_seconds: float = 60.0) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.table = db.table("executor_runs")
        db.migrate("executor_runs", MIGRATIONS)
        marks = ", ".join([db.ph] * (N_COLUMNS + 3))
        self._insert = (
            f"INSERT INTO {self.table} ({COLUMNS}, heartbeat_at, request, fingerprint)"  # noqa: S608
            f" VALUES ({marks}) ON CONFLICT (run_id) DO NOTHING"
        )
        self._lock = " FOR UPDATE" if db.dialect == "postgres" else ""

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
            queued=bool(row[18]),
            metadata=json.loads(row[19] or "{}"),
            multitask_strategy=row[20],
            webhook_url=row[21],
            output=_output(row[22]),
            finish_reason=row[23],
            rolled_back=bool(row[24]),
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
            cur.execute(self._insert, _row_values(record, now))
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
        output: RunOutput | None = None,
        finish_reason: str = "",
        executor_id: str = "",
    ) -> bool:
        """Record how a running run ended; False when it had ended (or moved on) already.

        With `executor_id`, only that executor's claim of the run is ended: a replica
        that lost the run to another after a stall cannot end it twice.
        """
        ph = self.db.ph
        owner = f" AND executor_id = {ph}" if executor_id else ""
        with self.db.transaction() as cur:
            cur.execute(
                f"UPDATE {self.table} SET status = {ph}, finished_at = {ph},"  # noqa: S608
                f" prompt_tokens = {ph}, completion_tokens = {ph}, tool_calls = {ph},"
                f" error_code = {ph}, error_message = {ph}, output_json = {ph},"
                f" finish_reason = {ph}, request = ''"
                f" WHERE run_id = {ph} AND status = '{LIVE}'{owner}",
                (
                    status.value,
                    finished_at.timestamp(),
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    tool_calls,
                    error_code,
                    error_message,
                    _output_json(output),
                    finish_reason,
                    run_id,
                    *((executor_id,) if executor_id else ()),
                ),
            )
            return bool(cur.rowcount == 1)

    def enqueue(self, record: RunRecord, request: bytes, *, reject_busy: bool) -> Enqueued:
        """Record a queued run with its request; an existing run id answers that run.

        With `reject_busy`, a session that has a live or queued run refuses it.

        Raises:
            SessionBusy: `reject_busy` and the run's session has a run in progress.
        """
        ph, t = self.db.ph, self.table
        now = record.created_at.timestamp()
        text = base64.b64encode(request).decode()
        with self.db.transaction() as cur:
            if record.session_key and self.db.dialect == "postgres":
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (record.agent_id,))
            fingerprint = _fingerprint(record, text)
            cur.execute(
                f"SELECT {COLUMNS}, fingerprint FROM {t} WHERE run_id = {ph}",  # noqa: S608
                (record.run_id,),
            )
            row = cur.fetchone()
            if row is not None:
                same = row[N_COLUMNS] == fingerprint
                return Enqueued(self._record(row), created=False, same_request=same)
            if reject_busy and record.session_key:
                cur.execute(
                    f"SELECT 1 FROM {t} WHERE session_key = {ph} AND (status = '{QUEUED}'"  # noqa: S608
                    f" OR status = '{LIVE}' AND heartbeat_at > {ph}) LIMIT 1",
                    (record.session_key, now - self.lease_seconds),
                )
                if cur.fetchone() is not None:
                    raise SessionBusy(record.agent_id, record.task_id)
            cur.execute(self._insert, _row_values(record, now, text, fingerprint))
            return Enqueued(record, created=True, same_request=True)

    def claim(self, run_id: str, executor_id: str, now: datetime, *, max_attempts: int) -> Claim:
        """Take a queued run (or one whose executor stopped renewing its lease) to run it.

        A run of a session waits while an earlier run of that session is queued or live.
        A run already started `max_attempts` times is failed with ATTEMPTS_EXHAUSTED.
        """
        ph, t = self.db.ph, self.table
        at = now.timestamp()
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {COLUMNS}, request, heartbeat_at FROM {t}"  # noqa: S608
                f" WHERE run_id = {ph}{self._lock}",
                (run_id,),
            )
            row = cur.fetchone()
            if row is None:
                return Claim(ClaimOutcome.MISSING)
            record, request, heartbeat = self._record(row), row[N_COLUMNS], row[N_COLUMNS + 1]
            if record.status.terminal:
                return Claim(ClaimOutcome.ENDED, record)
            # This executor's own claim is stale by definition: it no longer runs the run.
            held = record.status is RunStatus.RUNNING and record.executor_id != executor_id
            if held and float(heartbeat) > at - self.lease_seconds:
                return Claim(ClaimOutcome.ELSEWHERE, record)
            if record.session_key:
                cur.execute(
                    f"SELECT 1 FROM {t} WHERE session_key = {ph} AND run_id <> {ph}"  # noqa: S608
                    f" AND (status = '{LIVE}' AND heartbeat_at > {ph}"
                    f" OR status = '{QUEUED}' AND (created_at, run_id) < ({ph}, {ph})) LIMIT 1",
                    (
                        record.session_key,
                        run_id,
                        at - self.lease_seconds,
                        record.created_at.timestamp(),
                        run_id,
                    ),
                )
                if cur.fetchone() is not None:
                    # Seen waiting: the sweep leaves it alone while it waits its turn.
                    cur.execute(
                        f"UPDATE {t} SET heartbeat_at = {ph} WHERE run_id = {ph}"  # noqa: S608
                        f" AND status = '{QUEUED}'",
                        (at, run_id),
                    )
                    return Claim(ClaimOutcome.BUSY, record)
            if record.attempts >= max_attempts:
                message = f"the run was started {record.attempts} times without ending; given up"
                cur.execute(
                    f"UPDATE {t} SET status = '{RunStatus.FAILED.value}', finished_at = {ph},"  # noqa: S608
                    f" error_code = '{FailureCode.ATTEMPTS_EXHAUSTED.value}',"
                    f" error_message = {ph}, request = '' WHERE run_id = {ph}",
                    (at, message, run_id),
                )
                record.stopped(RunStatus.FAILED, now, FailureCode.ATTEMPTS_EXHAUSTED, message)
                return Claim(ClaimOutcome.EXHAUSTED, record)
            record.claimed(executor_id, now)
            cur.execute(
                f"UPDATE {t} SET status = '{LIVE}', executor_id = {ph},"  # noqa: S608
                f" started_at = {ph}, attempts = {ph}, heartbeat_at = {ph} WHERE run_id = {ph}",
                (executor_id, _ts(record.started_at), record.attempts, at, run_id),
            )
            return Claim(ClaimOutcome.CLAIMED, record, base64.b64decode(request))

    def release(self, run_id: str, executor_id: str) -> bool:
        """Give a claimed run back to the queue (this executor stops before it ends)."""
        ph = self.db.ph
        with self.db.transaction() as cur:
            cur.execute(
                f"UPDATE {self.table} SET status = '{QUEUED}', executor_id = ''"  # noqa: S608
                f" WHERE run_id = {ph} AND status = '{LIVE}' AND executor_id = {ph}",
                (run_id, executor_id),
            )
            return bool(cur.rowcount == 1)

    def unclaimed(self, before: datetime, now: datetime, limit: int) -> list[str]:
        """Queued runs not seen since `before` (oldest first, at most `limit`); marks them seen."""
        ph, t = self.db.ph, self.table
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT run_id FROM {t} WHERE status = '{QUEUED}' AND heartbeat_at < {ph}"  # noqa: S608
                f" ORDER BY created_at, run_id LIMIT {ph}",
                (before.timestamp(), limit),
            )
            run_ids = [row[0] for row in cur.fetchall()]
            if run_ids:
                marks = ", ".join([ph] * len(run_ids))
                cur.execute(
                    f"UPDATE {t} SET heartbeat_at = {ph} WHERE run_id IN ({marks})",  # noqa: S608
                    (now.timestamp(), *run_ids),
                )
            return run_ids

    def not_queued(self, run_id: str) -> None:
        """The queue did not take this queued run's notice: the next sweep re-queues it."""
        with self.db.transaction() as cur:
            cur.execute(
                f"UPDATE {self.table} SET heartbeat_at = 0"  # noqa: S608
                f" WHERE run_id = {self.db.ph} AND status = '{QUEUED}'",
                (run_id,),
            )

    def live_in_session(self, session_key: str, now: datetime) -> list[str]:
        """The runs of a session that are queued or running (live), oldest first."""
        ph = self.db.ph
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT run_id FROM {self.table} WHERE session_key = {ph}"  # noqa: S608
                f" AND (status = '{QUEUED}' OR status = '{LIVE}' AND heartbeat_at > {ph})"
                " ORDER BY created_at, run_id",
                (session_key, now.timestamp() - self.lease_seconds),
            )
            return [row[0] for row in cur.fetchall()]

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

    def request_cancel(
        self, run_id: str, now: datetime, *, rollback: bool = False
    ) -> tuple[RunRecord, bool] | None:
        """Flag a live run for cancellation; end it now when queued or its executor is gone.

        With `rollback`, the run is also marked rolled back (its steps are to be undone).
        """
        ph, t = self.db.ph, self.table
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {COLUMNS}, heartbeat_at FROM {t} WHERE run_id = {ph}{self._lock}",  # noqa: S608
                (run_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            record = self._record(row)
            if record.status.terminal:
                return record, False
            if rollback:
                cur.execute(
                    f"UPDATE {t} SET rolled_back = 1 WHERE run_id = {ph}",  # noqa: S608
                    (run_id,),
                )
                record.rolled_back = True
            gone = float(row[N_COLUMNS]) < now.timestamp() - self.lease_seconds
            if record.status is RunStatus.QUEUED or gone:
                message = (
                    "cancelled before it started"
                    if record.status is RunStatus.QUEUED
                    else "cancelled after its executor stopped"
                )
                cur.execute(
                    f"UPDATE {t} SET status = '{RunStatus.CANCELLED.value}', finished_at = {ph},"  # noqa: S608
                    f" error_code = 'CANCELLED', error_message = {ph}, request = ''"
                    f" WHERE run_id = {ph}",
                    (now.timestamp(), message, run_id),
                )
                record.stopped(RunStatus.CANCELLED, now, FailureCode.CANCELLED, message)
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

    def expire(
        self, stale_before: datetime, now: datetime, *, queued_stale_before: datetime | None = None
    ) -> list[RunRecord]:
        """End running runs whose lease lapsed; the runs ended.

        A queued run's lapse means its queue redelivers it to another executor, so it
        is ended only once `queued_stale_before` passed too (the queue lost it).
        """
        ph, t = self.db.ph, self.table
        message = "the executor running it stopped renewing its lease"
        queued_before = (queued_stale_before or stale_before).timestamp()
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {COLUMNS} FROM {t} WHERE status = '{LIVE}' AND heartbeat_at < {ph}"  # noqa: S608
                f" AND (queued = 0 OR heartbeat_at < {ph}){self._lock}",
                (stale_before.timestamp(), queued_before),
            )
            records = [self._record(row) for row in cur.fetchall()]
            for record in records:
                cur.execute(
                    f"UPDATE {t} SET status = '{RunStatus.FAILED.value}', finished_at = {ph},"  # noqa: S608
                    f" error_code = '{FailureCode.EXECUTOR_LOST.value}', error_message = {ph},"
                    f" request = '' WHERE run_id = {ph} AND status = '{LIVE}'",
                    (now.timestamp(), message, record.run_id),
                )
                record.stopped(RunStatus.FAILED, now, FailureCode.EXECUTOR_LOST, message)
        return records
