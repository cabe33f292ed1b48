"""pytest plugin: real infrastructure for agentrt tests.

Fixtures:
- `nats_server` (session): a nats-server with JetStream on a free port.
- `nats_prefix`: a subject/stream prefix unique to the test (isolation on the
  shared server).
- `make_nats_server`: factory for servers a test owns (to stop and restart).
- `redis_server` (session): a redis-server (append-only, fsync always) on a free port.
- `make_redis_server`: factory for Redis servers a test owns (to stop and restart).
- `rabbitmq_server` (session): a private RabbitMQ node (management API on) on free ports.
- `make_rabbitmq_server`: factory for RabbitMQ nodes a test owns (to stop and restart).
- `postgres_db` (session): a fresh PostgreSQL database for the run.
- `postgres_schema`: an empty schema unique to the test in that database.
- `private_postgres`: a PostgreSQL cluster the test owns (initdb/pg_ctl on a free port),
  to stop (`halt`) and start again (`resume`).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.postgres import (
    PostgresDatabase,
    ThrowawayCluster,
    create_schema,
    drop_schema,
    test_database,
)
from agentrt_testkit.rabbitmq_server import RabbitServer
from agentrt_testkit.redis_server import RedisServer
from agentrt_testkit.server_process import ServerProcess

S = TypeVar("S", bound=ServerProcess)


def _started(new: Callable[[], S]) -> Iterator[S]:
    """A server made by `new`, started; closed when the fixture ends."""
    server = new().start()
    try:
        yield server
    finally:
        server.close()


def _factory(new: Callable[[], S]) -> Iterator[Callable[[], S]]:
    """Start servers made by `new` on demand; all are closed when the fixture ends."""
    servers: list[S] = []

    def make() -> S:
        server = new().start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A nats-server (JetStream on) shared by the whole run."""
    yield from _started(NatsServer)


@pytest.fixture
def nats_prefix() -> str:
    """A prefix no other test uses, for subjects, streams and buckets."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_nats_server() -> Iterator[Callable[[], NatsServer]]:
    """Start servers owned by one test; all are closed after it."""
    yield from _factory(NatsServer)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the whole run (tests keep apart by key prefix)."""
    yield from _started(RedisServer)


@pytest.fixture
def make_redis_server() -> Iterator[Callable[[], RedisServer]]:
    """Start Redis servers owned by one test; all are closed after it."""
    yield from _factory(RedisServer)


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitServer]:
    """A RabbitMQ node shared by the whole run (tests keep apart by name prefix)."""
    yield from _started(RabbitServer)


@pytest.fixture
def make_rabbitmq_server() -> Iterator[Callable[[], RabbitServer]]:
    """Start RabbitMQ nodes owned by one test (slow: ~5 s each); all are closed after it."""
    yield from _factory(RabbitServer)


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[PostgresDatabase]:
    """A fresh PostgreSQL database for this run; fails (never skips) without PostgreSQL."""
    try:
        with test_database() as db:
            yield db
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def postgres_schema(postgres_db: PostgresDatabase) -> Iterator[str]:
    """An empty schema for this test only."""
    schema = create_schema(postgres_db)
    try:
        yield schema
    finally:
        drop_schema(postgres_db, schema)


@pytest.fixture
def private_postgres() -> Iterator[ThrowawayCluster]:
    """A PostgreSQL cluster of this test's own, started; removed after it."""
    try:
        cluster = ThrowawayCluster()
        cluster.start()
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as e:
        pytest.fail(f"a private PostgreSQL cluster is needed (initdb/pg_ctl): {e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
