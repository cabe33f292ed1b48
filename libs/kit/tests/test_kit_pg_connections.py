"""PgConnections against a real PostgreSQL: reuse, fast refusal, deadlines, lost connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from agentrt_kit.context import deadline_var, remaining_seconds
from agentrt_kit.errors import DeadlineExceeded, Unavailable
from agentrt_kit.pg_connections import AsyncPgConnections, PgConnections
from agentrt_kit.sql import SqlDatabase
from agentrt_testkit.ports import free_port
from agentrt_testkit.postgres import PostgresDatabase

pytestmark = pytest.mark.postgres


@contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    token = deadline_var.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        deadline_var.reset(token)


def backend_pid(connections: PgConnections) -> int:
    with connections.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def connections(postgres_db: PostgresDatabase) -> Iterator[PgConnections]:
    pool = PgConnections(postgres_db.dsn, max_size=2, kwargs={"autocommit": True})
    try:
        yield pool
    finally:
        pool.close()


def test_a_connection_is_reused_and_its_statements_bounded_as_set(
    connections: PgConnections, postgres_db: PostgresDatabase
) -> None:
    first = backend_pid(connections)
    assert backend_pid(connections) == first
    with connections.connection() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
    bounded = PgConnections(postgres_db.dsn, statement_timeout=30)
    try:
        with bounded.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
            conn.rollback()
    finally:
        bounded.close()


def test_a_refused_connect_is_unavailable_and_refuses_at_once_for_a_while() -> None:
    pool = PgConnections(
        f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres",
        retry_after=60,
        name="test store",
    )
    with pytest.raises(Unavailable) as first, pool.connection():
        pass
    assert first.value.reason == "DATABASE_UNAVAILABLE"
    assert "test store unavailable" in first.value.message
    # Refused without trying: the message is the first failure's, kept.
    with pytest.raises(Unavailable) as again, pool.connection():
        pass
    assert again.value.message == first.value.message


def test_a_call_past_its_deadline_sends_nothing(
    connections: PgConnections, postgres_db: PostgresDatabase
) -> None:
    backend_pid(connections)  # an idle connection is ready
    with (
        deadline_in(-0.001),
        pytest.raises(DeadlineExceeded) as caught,
        connections.connection() as conn,
    ):
        conn.execute("CREATE TABLE never_made (x int)")
    assert "nothing was written" in caught.value.message
    with psycopg.connect(postgres_db.dsn) as check:
        row = check.execute("SELECT to_regclass('never_made')").fetchone()
    assert row == (None,)


def test_a_statement_is_cancelled_at_the_deadline_and_the_connection_stays_usable(
    connections: PgConnections,
) -> None:
    with (
        deadline_in(0.3),
        pytest.raises(DeadlineExceeded) as caught,
        connections.connection() as conn,
    ):
        conn.execute("SELECT pg_sleep(5)")
    assert "rolled back" in caught.value.message
    assert remaining_seconds() is None
    with connections.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # Without a deadline the default (none) is back.
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_connections_the_server_ended_are_replaced_without_an_error(
    connections: PgConnections, postgres_db: PostgresDatabase
) -> None:
    with connections.connection() as a, connections.connection() as b:
        pids = {a.info.backend_pid, b.info.backend_pid}
    with psycopg.connect(postgres_db.dsn, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the termination reaches the sockets
        with psycopg.connect(postgres_db.dsn, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)
            ).fetchone()
        if row == (0,):
            break
        time.sleep(0.05)
    assert backend_pid(connections) not in pids


def test_a_connection_lost_in_use_is_unavailable_then_the_next_call_reconnects(
    postgres_db: PostgresDatabase,
) -> None:
    pool = PgConnections(postgres_db.dsn, kwargs={"autocommit": True}, retry_after=0.2)
    try:
        with pytest.raises(Unavailable) as caught, pool.connection() as conn:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert caught.value.reason == "OUTCOME_UNKNOWN"
        assert "may or may not have been applied" in caught.value.message
        time.sleep(0.25)
        assert backend_pid(pool) > 0
    finally:
        pool.close()


def test_a_statement_error_stays_the_driver_s(connections: PgConnections) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable), connections.connection() as conn:
        conn.execute("SELECT * FROM no_such_table")
    assert backend_pid(connections) > 0  # the connection went back healthy


def test_a_full_pool_answers_busy_after_its_wait(postgres_db: PostgresDatabase) -> None:
    pool = PgConnections(postgres_db.dsn, max_size=1, wait_timeout=0.2)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pool.connection():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        with pytest.raises(Unavailable) as caught, pool.connection():
            pass
        assert caught.value.reason == "DATABASE_BUSY"
        # Within a call whose deadline comes first, the wait ends at the deadline.
        with deadline_in(0.05), pytest.raises(DeadlineExceeded), pool.connection():
            pass
    finally:
        release.set()
        holder.join()
        pool.close()
    with pytest.raises(Unavailable, match="closed"), pool.connection():
        pass


def test_an_sql_database_on_a_refusing_server_is_unavailable_at_open() -> None:
    db = SqlDatabase(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(Unavailable):
        db.open()


async def test_the_async_twin_reuses_refuses_and_reports_a_lost_connection(
    postgres_db: PostgresDatabase,
) -> None:
    refused = AsyncPgConnections(
        f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres", retry_after=60
    )
    with pytest.raises(Unavailable, match="unavailable"):
        async with refused.connection():
            pass
    pool = AsyncPgConnections(
        postgres_db.dsn, max_size=1, kwargs={"autocommit": True}, wait_timeout=0.1
    )
    try:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            with pytest.raises(Unavailable) as busy:
                async with pool.connection():
                    pass
            assert busy.value.reason == "DATABASE_BUSY"
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
        with deadline_in(0.3), pytest.raises(DeadlineExceeded):
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")
        with pytest.raises(Unavailable) as lost:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert lost.value.reason == "OUTCOME_UNKNOWN"
    finally:
        await pool.close()
    with pytest.raises(Unavailable, match="closed"):
        async with pool.connection():
            pass
