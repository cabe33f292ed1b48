"""A real PostgreSQL database for the test run.

The server comes from `AGENTRT_TEST_POSTGRES_DSN` (default: the machine's server
at postgresql://postgres@127.0.0.1:5432/postgres). When that server does not
answer and PostgreSQL binaries are installed, a throwaway cluster is created
with initdb/pg_ctl in a temporary directory. When neither works the tests that
need PostgreSQL fail: they never skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from agentrt_testkit.ports import free_port

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class PostgresDatabase:
    """Connection facts of one database."""

    host: str
    port: int
    user: str
    password: str
    dbname: str

    @property
    def dsn(self) -> str:
        """Libpq connection string."""
        return conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
        )

    def with_db(self, dbname: str) -> PostgresDatabase:
        """The same server, another database."""
        return PostgresDatabase(self.host, self.port, self.user, self.password, dbname)


def parse_dsn(dsn: str) -> PostgresDatabase:
    """Split a DSN or URL into its parts."""
    parts = conninfo.conninfo_to_dict(dsn)
    return PostgresDatabase(
        host=str(parts.get("host") or "127.0.0.1"),
        port=int(parts.get("port") or 5432),
        user=str(parts.get("user") or "postgres"),
        password=str(parts.get("password") or ""),
        dbname=str(parts.get("dbname") or "postgres"),
    )


def reachable(db: PostgresDatabase) -> str | None:
    """None when the server answers, else why not."""
    try:
        with psycopg.connect(db.dsn, connect_timeout=3):
            return None
    except psycopg.Error as e:
        return str(e).strip()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory, removed on stop."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("initdb/pg_ctl not installed")
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self.dir = tempfile.mkdtemp(prefix="agentrt-pg-")
        self.port = free_port()
        # initdb refuses to run as root: run the cluster as the postgres user then.
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=120)  # noqa: S603

    @property
    def _data(self) -> str:
        return str(Path(self.dir) / "data")

    def start(self) -> PostgresDatabase:
        """Initdb + pg_ctl start; returns the `postgres` database of the cluster."""
        self._run(self._initdb, "-D", self._data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self.resume()

    def resume(self) -> PostgresDatabase:
        """Start the (initialised) cluster on its port, with what it stored."""
        self._run(
            self._pg_ctl,
            "-D",
            self._data,
            "-w",
            "-l",
            str(Path(self.dir) / "log"),
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        return PostgresDatabase("127.0.0.1", self.port, "postgres", "", "postgres")

    def halt(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m <mode>` (smart, fast, immediate), keeping the files."""
        self._run(self._pg_ctl, "-D", self._data, "-m", mode, "-w", "stop")

    def stop(self) -> None:
        """Stop the cluster and delete its files."""
        try:
            self._run(self._pg_ctl, "-D", self._data, "-m", "immediate", "stop")
        except subprocess.CalledProcessError:  # halted already
            pass
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def test_database() -> Iterator[PostgresDatabase]:
    """A fresh database for this test run, dropped afterwards.

    Raises:
        RuntimeError: when no PostgreSQL server is reachable or can be started.
    """
    server = parse_dsn(os.environ.get("AGENTRT_TEST_POSTGRES_DSN", DEFAULT_DSN))
    cluster: ThrowawayCluster | None = None
    problem = reachable(server)
    if problem is not None:
        try:
            cluster = ThrowawayCluster()
            server = cluster.start()
        except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as e:
            raise RuntimeError(
                f"PostgreSQL is required for these tests: {server.host}:{server.port} "
                f"does not answer ({problem}) and no throwaway cluster could start ({e}). "
                "Set AGENTRT_TEST_POSTGRES_DSN to a server you can use."
            ) from None
    name = f"agentrt_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield server.with_db(name)
        finally:
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    finally:
        if cluster is not None:
            cluster.stop()


def create_schema(db: PostgresDatabase) -> str:
    """A new empty schema in `db` (each test gets its own)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return schema


def drop_schema(db: PostgresDatabase, schema: str) -> None:
    """Drop a schema made by `create_schema`, with everything in it."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
