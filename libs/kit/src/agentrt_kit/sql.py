"""A small SQL layer for services' own tables, on SQLite (embedded default) or PostgreSQL.

Services that keep plain tables (ledgers, run records) open a `SqlDatabase` from
a URL: `sqlite:///path/to/file.db` or a `postgresql://` DSN. Statements are
written once with `{ph}` for placeholders and `{t:name}`-style table names via
`table()`; the dialects differ only there. Schemas evolve through an ordered
list of migrations recorded in `schema_migrations` and applied at start-up
(`apply_migrations` also serves tables kept through other libraries).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql as pgsql

from agentrt_kit.concurrency import run_inline
from agentrt_kit.errors import Unavailable
from agentrt_kit.pg_connections import PgConnections

MIGRATIONS_TABLE = "schema_migrations"
BlockingCall = Callable[..., Awaitable[Any]]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class MigrationCursor(Protocol):
    """What migrations need of a DB-API cursor."""

    def execute(self, statement: Any, params: Any = ...) -> Any:
        """Run one statement."""
        ...

    def fetchone(self) -> Any:
        """The next row."""
        ...


def apply_migrations(
    cursor: MigrationCursor,
    *,
    component: str,
    migrations: Sequence[Sequence[str]],
    ph: str,
    table: Callable[[str], str],
    lock: str | None = None,
) -> int:
    """Apply the migrations of `component` not yet recorded; returns the version reached.

    Each migration is a list of statements whose `{t}`-style placeholders are table
    names: `{name}` in a statement becomes `table(name)`. Run inside a transaction;
    `lock` (PostgreSQL: an advisory lock) serialises replicas starting together.
    """
    if lock:
        cursor.execute(lock)
    versions = table(MIGRATIONS_TABLE)
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {versions} "
        "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    cursor.execute(
        f"SELECT version FROM {versions} WHERE component = {ph}",  # noqa: S608 - a table name
        (component,),
    )
    row = cursor.fetchone()
    current = int(row[0] if isinstance(row, tuple | list) else row["version"]) if row else 0
    for version, statements in enumerate(migrations[current:], start=current + 1):
        for statement in statements:
            cursor.execute(_expand(statement, table))
        cursor.execute(
            f"INSERT INTO {versions} (component, version) VALUES ({ph}, {ph}) "  # noqa: S608
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, version),
        )
    return len(migrations)


def _expand(statement: str, table: Callable[[str], str]) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: table(m.group(1)), statement)


def dialect_of(url: str) -> str:
    """`sqlite` for `sqlite:///path`, `postgres` for a PostgreSQL DSN (URL or key=value).

    Raises:
        ValueError: for anything else.
    """
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")) or "dbname=" in url:
        return "postgres"
    raise ValueError("database URL must start with sqlite:/// or postgresql://")


class SqlDatabase:
    """Connections to one database, a transaction at a time per caller thread."""

    def __init__(self, url: str, *, schema: str = "public", pool_size: int = 5) -> None:
        if dialect_of(url) == "sqlite":
            self.dialect = "sqlite"
            self.ph = "?"
            self._path = Path(url.removeprefix("sqlite:///")).expanduser().resolve()
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._local = threading.local()
            self._connections: list[sqlite3.Connection] = []
            self._lock = threading.Lock()
            # One transaction at a time in this process: SQLite has one writer anyway,
            # and waiting here is a wake-up, where SQLite's busy handler sleeps in
            # growing steps (milliseconds each) while threads contend.
            self._serial = threading.Lock()
            self.schema = ""
        else:
            if not _IDENTIFIER.fullmatch(schema):
                raise ValueError(f"unusable schema name {schema!r}")
            self.dialect = "postgres"
            self.ph = "%s"
            self.schema = schema
            self._pool = PgConnections(url, max_size=pool_size, kwargs={"autocommit": False})

    def open(self) -> SqlDatabase:
        """Connect (PostgreSQL: check the server answers)."""
        if self.dialect == "postgres":
            with self._pool.connection():
                pass
        if self.schema and self.schema != "public":
            with self.transaction() as cursor:
                cursor.execute(
                    pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        pgsql.Identifier(self.schema)
                    )
                )
        return self

    def calls(self, runner: BlockingCall) -> BlockingCall:
        """How async code should call this database's methods.

        Embedded SQLite statements take microseconds, less than handing them to a
        thread and the GIL back (measured: the executor's run records ran 1.5x faster
        inline), so they run on the loop; PostgreSQL calls wait on the network and
        go through `runner`. SQLite is the single-process default: a second process
        writing the same file would make the loop wait for its lock.
        """
        return run_inline if self.dialect == "sqlite" else runner

    def table(self, name: str) -> str:
        """A table name as statements must write it (schema-qualified on PostgreSQL)."""
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"unusable table name {name!r}")
        return f'"{self.schema}"."{name}"' if self.dialect == "postgres" else name

    def _sqlite(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, timeout=10, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: commits survive a crash of the process and the
            # database is never corrupted; a power loss may undo the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on error."""
        if self.dialect == "sqlite":
            conn = self._sqlite()
            with self._serial:
                cursor = conn.cursor()
                # IMMEDIATE: take the write lock up front, so a reader never has to upgrade.
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    yield cursor
                except BaseException:
                    conn.rollback()
                    raise
                else:
                    conn.commit()
                finally:
                    cursor.close()
            return
        try:
            with self._pool.connection() as pg, pg.transaction():
                pg_cursor = pg.cursor()
                try:
                    yield pg_cursor
                finally:
                    pg_cursor.close()
        except psycopg.OperationalError as e:
            raise Unavailable(f"database unavailable: {e}") from e

    def migrate(self, component: str, migrations: Sequence[Sequence[str]]) -> int:
        """Apply pending migrations of `component`."""
        lock = None
        if self.dialect == "postgres":
            lock = f"SELECT pg_advisory_xact_lock(hashtext('agentrt.migrations.{component}'))"
        with self.transaction() as cursor:
            return apply_migrations(
                cursor,
                component=component,
                migrations=migrations,
                ph=self.ph,
                table=self.table,
                lock=lock,
            )

    def close(self) -> None:
        """Close every connection."""
        if self.dialect == "sqlite":
            with self._lock:
                for conn in self._connections:
                    conn.close()
                self._connections.clear()
        else:
            self._pool.close()
