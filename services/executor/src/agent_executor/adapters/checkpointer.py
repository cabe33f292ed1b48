"""Adapter: the LangGraph checkpointer holding sessions (server-side memory).

SQLite by default (`sqlite:///path`, through aiosqlite) and PostgreSQL by
setting (a `postgresql://` or `key=value` DSN, through a psycopg async pool); the tables are
LangGraph's own, created at start-up. A session is the thread `<agent>:<task>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

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
    async with AsyncConnectionPool(
        url, min_size=1, max_size=pool_size, kwargs=kwargs, open=False
    ) as pool:
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


async def _try_lock(conn: Any, name: str) -> bool:
    """Take the session advisory lock `name` if it is free; whether it was taken."""
    cursor = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS taken", (name,))
    row = await cursor.fetchone()
    return bool(row and row["taken"])
