"""Adapter: the LangGraph checkpointer holding sessions (server-side memory).

SQLite by default (`sqlite:///path`, through aiosqlite) and PostgreSQL by
setting (a `postgresql://` or `key=value` DSN, through a psycopg async pool); the tables are
LangGraph's own, created at start-up. A session is the thread `<agent>:<task>`.

`session_history` prunes a thread to its newest checkpoints with SQL on those tables, in
one transaction per thread (LangGraph's own `aprune` keeps only the latest checkpoint, only
on PostgreSQL, and cannot stop at a given run's checkpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agent_executor.application.ports import RUN_ID_KEY, SessionHistory
from agentrt_kit.pg_connections import AsyncPgConnections
from agentrt_kit.sql import dialect_of

SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MIGRATION_LOCK_POLL_SECONDS = 0.1


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///` URL, its directory created (start-up only)."""
    path = Path(url.removeprefix("sqlite:///")).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


@contextlib.asynccontextmanager
async def open_checkpointer(
    url: str, *, schema: str = "public", pool_size: int = 10
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """A set-up checkpointer for `url`, closed on exit."""
    if dialect_of(url) == "sqlite":
        async with aiosqlite.connect(sqlite_path(url)) as conn:
            await conn.execute("PRAGMA journal_mode=WAL")
            sqlite_saver = AsyncSqliteSaver(conn)
            await sqlite_saver.setup()
            yield sqlite_saver
        return
    if not SCHEMA.fullmatch(schema):
        raise ValueError(f"unusable schema name {schema!r}")
    kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    if schema != "public":
        kwargs["options"] = f"-c search_path={schema}"
    pool = _SaverPool(
        AsyncPgConnections(url, max_size=pool_size, kwargs=kwargs, name="sessions database")
    )
    try:
        pg_saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        # Replicas starting together would race through LangGraph's migrations (a
        # duplicate key in checkpoint_migrations fails all but one): one at a time.
        # The lock is polled, not waited for: a waiting statement holds a snapshot,
        # which the migrations' CREATE INDEX CONCURRENTLY waits out — a deadlock.
        async with pool.connection() as conn:
            lock = f"agentrt.migrations.checkpointer.{schema}"
            while not await _try_lock(conn, lock):  # noqa: ASYNC110 - polled, see above
                await asyncio.sleep(MIGRATION_LOCK_POLL_SECONDS)
            try:
                if schema != "public":
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                await pg_saver.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
        yield pg_saver
    finally:
        await pool.connections.close()


class _SaverPool(AsyncConnectionPool):
    """LangGraph's saver takes a psycopg pool; this one hands out `AsyncPgConnections`'s.

    psycopg_pool waited its whole timeout for a connection while the database refused
    them and, once it was back, reconnected only after its growing backoff; these fail
    at once while it is down and reconnect on the next call (see agentrt_kit.
    pg_connections). Only `connection()` is used by the saver, and only it is served.
    """

    def __init__(self, connections: AsyncPgConnections) -> None:
        super().__init__("", min_size=1, max_size=1, open=False)
        self.connections = connections

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of `connections` (the `timeout` is theirs, by their settings)."""
        async with self.connections.connection() as conn:
            yield conn


async def _try_lock(conn: Any, name: str) -> bool:
    """Take the session advisory lock `name` if it is free; whether it was taken."""
    cursor = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS taken", (name,))
    row = await cursor.fetchone()
    return bool(row and row["taken"])


def session_history(saver: BaseCheckpointSaver[Any]) -> SessionHistory:
    """The pruning side of a checkpointer `open_checkpointer` opened."""
    if isinstance(saver, AsyncSqliteSaver):
        return SqliteSessionHistory(saver)
    if isinstance(saver, AsyncPostgresSaver) and isinstance(saver.conn, AsyncConnectionPool):
        return PostgresSessionHistory(saver.conn)
    raise TypeError(f"no session history for {type(saver).__name__}")


def _check_keep(keep: int) -> None:
    if keep < 1:
        raise ValueError(f"a session keeps at least its newest checkpoint, not {keep}")


# LangGraph's `DeltaChannel` marks the metadata of the threads that use one (as its own
# prune checks): their values are rebuilt from older checkpoints, which must stay.
SQLITE_USES_DELTA = """
SELECT EXISTS (
    SELECT 1 FROM checkpoints WHERE thread_id = ? AND (
        json_extract(CAST(metadata AS TEXT), '$.counters_since_delta_snapshot') IS NOT NULL
        OR json_extract(CAST(metadata AS TEXT), '$.delta_writes_versioned') IS NOT NULL
    )
)
"""
SQLITE_LAST_OF_RUN = """
SELECT max(checkpoint_id) FROM checkpoints
WHERE thread_id = ? AND checkpoint_ns = '' AND json_extract(CAST(metadata AS TEXT), ?) = ?
"""
SQLITE_DELETE_CHECKPOINTS = """
DELETE FROM checkpoints
WHERE thread_id = :thread AND checkpoint_ns = '' AND checkpoint_id <= :last
AND checkpoint_id NOT IN (
    SELECT checkpoint_id FROM checkpoints
    WHERE thread_id = :thread AND checkpoint_ns = '' AND checkpoint_id <= :last
    ORDER BY checkpoint_id DESC LIMIT :keep
)
RETURNING checkpoint_id
"""
# The deleted ids go as one JSON array: a long-unpruned thread has more of them than
# SQLite takes parameters.
SQLITE_DELETE_WRITES = """
DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ''
AND checkpoint_id IN (SELECT value FROM json_each(?))
"""
SQLITE_ORPHAN_CHILDREN = """
UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread_id = ? AND checkpoint_ns = ''
AND parent_checkpoint_id IN (SELECT value FROM json_each(?))
"""


class SqliteSessionHistory:
    """Prunes sessions in the SQLite checkpointer (each checkpoint holds its values)."""

    def __init__(self, saver: AsyncSqliteSaver) -> None:
        self.saver = saver

    async def prune(self, thread_id: str, *, keep: int, through_run: str) -> int:
        """See `SessionHistory.prune`."""
        _check_keep(keep)
        conn = self.saver.conn
        # The saver's lock keeps its other calls off the shared connection meanwhile;
        # IMMEDIATE takes the write lock at once, against other processes on the file.
        async with self.saver.lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                deleted = await self._prune(conn, thread_id, keep, through_run)
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
        return deleted

    async def _prune(
        self, conn: aiosqlite.Connection, thread_id: str, keep: int, through_run: str
    ) -> int:
        async with conn.execute(SQLITE_USES_DELTA, (thread_id,)) as cur:
            delta = await cur.fetchone()
        async with conn.execute(
            SQLITE_LAST_OF_RUN, (thread_id, f"$.{RUN_ID_KEY}", through_run)
        ) as cur:
            last = await cur.fetchone()
        if (delta and delta[0]) or not last or last[0] is None:
            return 0
        params = {"thread": thread_id, "last": last[0], "keep": keep}
        async with conn.execute(SQLITE_DELETE_CHECKPOINTS, params) as cur:
            deleted = [row[0] for row in await cur.fetchall()]
        if deleted:
            ids = json.dumps(deleted)
            await conn.execute(SQLITE_DELETE_WRITES, (thread_id, ids))
            await conn.execute(SQLITE_ORPHAN_CHILDREN, (thread_id, ids))
        return len(deleted)


PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s))"
PG_USES_DELTA = """
SELECT EXISTS (
    SELECT 1 FROM checkpoints WHERE thread_id = %s AND (
        metadata ? 'counters_since_delta_snapshot' OR metadata ? 'delta_writes_versioned'
    )
) AS delta
"""
PG_DELETE_CHECKPOINTS = """
WITH last AS (
    SELECT max(checkpoint_id) AS id FROM checkpoints
    WHERE thread_id = %(thread)s AND checkpoint_ns = '' AND metadata ->> %(key)s = %(run)s
), kept AS (
    SELECT checkpoint_id FROM checkpoints, last
    WHERE thread_id = %(thread)s AND checkpoint_ns = '' AND checkpoint_id <= last.id
    ORDER BY checkpoint_id DESC LIMIT %(keep)s
)
DELETE FROM checkpoints AS c USING last
WHERE c.thread_id = %(thread)s AND c.checkpoint_ns = '' AND c.checkpoint_id <= last.id
AND c.checkpoint_id NOT IN (SELECT checkpoint_id FROM kept)
RETURNING c.checkpoint_id, c.checkpoint -> 'channel_versions' AS versions
"""
PG_DELETE_WRITES = """
DELETE FROM checkpoint_writes
WHERE thread_id = %s AND checkpoint_ns = '' AND checkpoint_id = ANY(%s)
"""
PG_ORPHAN_CHILDREN = """
UPDATE checkpoints SET parent_checkpoint_id = NULL
WHERE thread_id = %s AND checkpoint_ns = '' AND parent_checkpoint_id = ANY(%s)
"""
# A value (blob) a deleted checkpoint used goes unless a checkpoint still uses it. One
# saved meanwhile uses its parent's values (the newest checkpoint's, never deleted) or
# new ones no deleted checkpoint used, so it cannot lose a value it needs.
PG_DELETE_BLOBS = """
DELETE FROM checkpoint_blobs AS b
USING unnest(%(channels)s::text[], %(versions)s::text[]) AS freed(channel, version)
WHERE b.thread_id = %(thread)s AND b.checkpoint_ns = ''
AND b.channel = freed.channel AND b.version = freed.version
AND NOT EXISTS (
    SELECT 1 FROM checkpoints AS c
    WHERE c.thread_id = %(thread)s AND c.checkpoint_ns = ''
    AND c.checkpoint -> 'channel_versions' ->> freed.channel = freed.version
)
"""


class PostgresSessionHistory:
    """Prunes sessions in the PostgreSQL checkpointer (values are shared blobs)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def prune(self, thread_id: str, *, keep: int, through_run: str) -> int:
        """See `SessionHistory.prune`."""
        _check_keep(keep)
        async with self.pool.connection() as conn, conn.transaction():
            # Prunes of one thread take turns (replicas end its runs one after another);
            # runs saving checkpoints meanwhile are not held up.
            await conn.execute(PG_LOCK, (f"agentrt.sessions.prune.{thread_id}",))
            cur = await conn.execute(PG_USES_DELTA, (thread_id,))
            row = await cur.fetchone()
            if row is None or row["delta"]:
                return 0
            cur = await conn.execute(
                PG_DELETE_CHECKPOINTS,
                {"thread": thread_id, "key": RUN_ID_KEY, "run": through_run, "keep": keep},
            )
            deleted = await cur.fetchall()
            if not deleted:
                return 0
            ids = [r["checkpoint_id"] for r in deleted]
            await conn.execute(PG_DELETE_WRITES, (thread_id, ids))
            await conn.execute(PG_ORPHAN_CHILDREN, (thread_id, ids))
            freed = sorted(
                {(ch, str(v)) for r in deleted for ch, v in (r["versions"] or {}).items()}
            )
            await conn.execute(
                PG_DELETE_BLOBS,
                {
                    "thread": thread_id,
                    "channels": [ch for ch, _ in freed],
                    "versions": [v for _, v in freed],
                },
            )
        return len(ids)
