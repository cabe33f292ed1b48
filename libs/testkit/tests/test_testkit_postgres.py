"""PostgreSQL for tests: DSNs, the run's database, per-test schemas, the throwaway cluster."""

from __future__ import annotations

import glob
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import agentrt_testkit.postgres as pg
from agentrt_testkit.ports import free_port
from agentrt_testkit.postgres import (
    PostgresDatabase,
    ThrowawayCluster,
    create_schema,
    drop_schema,
    parse_dsn,
    reachable,
)


def schemas(db: PostgresDatabase) -> set[str]:
    with psycopg.connect(db.dsn) as conn:
        rows = conn.execute("SELECT schema_name FROM information_schema.schemata").fetchall()
    return {r[0] for r in rows}


def databases(db: PostgresDatabase) -> set[str]:
    with psycopg.connect(db.with_db("postgres").dsn) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


# ------------------------------------------------------------------ DSNs


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://app:s3cret@db.example:6543/agents",
            PostgresDatabase("db.example", 6543, "app", "s3cret", "agents"),
        ),
        (
            "host=10.0.0.5 port=5433 user=me dbname=x password='p w'",
            PostgresDatabase("10.0.0.5", 5433, "me", "p w", "x"),
        ),
        ("postgresql://", PostgresDatabase("127.0.0.1", 5432, "postgres", "", "postgres")),
        ("", PostgresDatabase("127.0.0.1", 5432, "postgres", "", "postgres")),
    ],
)
def test_parse_dsn(dsn: str, expected: PostgresDatabase) -> None:
    assert parse_dsn(dsn) == expected


def test_dsn_round_trips_including_odd_passwords() -> None:
    db = PostgresDatabase("127.0.0.1", 5999, "u", "it's a p@ss word", "d-b")
    assert parse_dsn(db.dsn) == db


def test_with_db_changes_only_the_database() -> None:
    db = PostgresDatabase("h", 1, "u", "p", "one")
    other = db.with_db("two")
    assert other == PostgresDatabase("h", 1, "u", "p", "two")
    assert db.dbname == "one"


# ------------------------------------------------------------------ reachability


def test_reachable_for_the_run_database(postgres_db: PostgresDatabase) -> None:
    assert reachable(postgres_db) is None


def test_unreachable_server_reports_why() -> None:
    problem = reachable(PostgresDatabase("127.0.0.1", free_port(), "postgres", "", "postgres"))
    assert problem is not None
    assert "connection" in problem.lower()
    assert problem == problem.strip()


def test_run_database_is_fresh_and_separate(postgres_db: PostgresDatabase) -> None:
    assert postgres_db.dbname.startswith("agentrt_test_")
    with psycopg.connect(postgres_db.dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (postgres_db.dbname,)


# ------------------------------------------------------------------ schemas


def test_create_and_drop_schema(postgres_db: PostgresDatabase) -> None:
    first, second = create_schema(postgres_db), create_schema(postgres_db)
    assert first != second
    assert {first, second} <= schemas(postgres_db)
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {}.t (x int)").format(sql.Identifier(first)))
    drop_schema(postgres_db, first)  # with its tables
    drop_schema(postgres_db, first)  # already gone: fine
    assert first not in schemas(postgres_db)
    assert second in schemas(postgres_db)
    drop_schema(postgres_db, second)


def test_postgres_schema_fixture_is_an_empty_schema_of_its_own(
    postgres_db: PostgresDatabase, postgres_schema: str
) -> None:
    assert postgres_schema in schemas(postgres_db)
    with psycopg.connect(postgres_db.dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
            (postgres_schema,),
        ).fetchone()
    assert tables == (0,)


# ------------------------------------------------------------------ test_database


def test_test_database_creates_and_drops_a_database(
    postgres_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = postgres_db.with_db("postgres")
    monkeypatch.setenv("AGENTRT_TEST_POSTGRES_DSN", server.dsn)
    with pg.test_database() as db:
        assert (db.host, db.port) == (server.host, server.port)
        assert db.dbname in databases(server)
        with psycopg.connect(db.dsn) as conn:  # an open session does not block the drop
            conn.execute("CREATE TABLE t (x int)")
            conn.commit()
    assert db.dbname not in databases(server)


def _initdb_available() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@pytest.mark.skipif(not _initdb_available(), reason="PostgreSQL binaries not installed")
def test_unreachable_server_falls_back_to_a_throwaway_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "AGENTRT_TEST_POSTGRES_DSN", f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    )
    with pg.test_database() as db:
        with psycopg.connect(db.dsn) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        # The cluster's socket directory names its port.
        (socket_file,) = Path(tempfile.gettempdir()).glob(f"agentrt-pg-*/.s.PGSQL.{db.port}")
    assert reachable(db) is not None  # the cluster is gone
    assert not socket_file.parent.exists()


@pytest.mark.skipif(not _initdb_available(), reason="PostgreSQL binaries not installed")
def test_throwaway_cluster_starts_and_stops() -> None:
    cluster = ThrowawayCluster()
    db = cluster.start()
    try:
        assert reachable(db) is None
        assert db.port == cluster.port
    finally:
        cluster.stop()
    assert reachable(db) is not None
    assert not Path(cluster.dir).exists()


def test_without_server_or_binaries_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv("AGENTRT_TEST_POSTGRES_DSN", f"postgresql://postgres@127.0.0.1:{port}/x")
    # No real alternative: simulate a machine without PostgreSQL binaries.
    monkeypatch.setattr(pg, "_pg_bin", lambda name: None)
    with pytest.raises(RuntimeError) as info, pg.test_database():
        pytest.fail("must not yield")
    message = str(info.value)
    assert f"127.0.0.1:{port} does not answer" in message
    assert "initdb/pg_ctl not installed" in message
    assert "AGENTRT_TEST_POSTGRES_DSN" in message


@pytest.mark.skipif(
    not glob.glob("/usr/lib/postgresql/*/bin/initdb"), reason="no Debian-style PostgreSQL install"
)
def test_pg_bin_finds_debian_binaries_off_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    found = pg._pg_bin("initdb")
    assert found is not None
    assert found.startswith("/usr/lib/postgresql/")
    assert pg._pg_bin("no-such-postgres-tool") is None
