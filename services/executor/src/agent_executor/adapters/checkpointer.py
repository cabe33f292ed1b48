"""Adapter: the LangGraph checkpointer holding sessions (server-side memory).

SQLite by default (`sqlite:///path`, through aiosqlite) and PostgreSQL by
setting (a `postgresql://` or `key=value` DSN, through a psycopg async pool); the tables are
LangGraph's own, created at start-up. A session is the thread `<agent>:<task>`.
"""

from __future__ import annotations

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
        if schema != "public":
            async with pool.connection() as conn:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        pg_saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await pg_saver.setup()
        yield pg_saver
