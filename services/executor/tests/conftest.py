"""Fixtures for the executor's tests: the whole system (registry, tools, executor) over gRPC.

Each test gets its own NATS subject prefix and its own SQLite files (or its own
PostgreSQL schema), so tests never share state.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from executor_support import StartSystem, System
from fake_openai import FakeOpenAI

from agentrt_testkit.postgres import PostgresDatabase


@pytest.fixture
async def make_system(
    tmp_path: Path, nats_server: Any, nats_prefix: str
) -> AsyncIterator[StartSystem]:
    """Start a system on SQLite with executor settings overridden as given."""
    started: list[System] = []

    async def start(**executor_overrides: Any) -> System:
        system = System.on_sqlite(tmp_path, nats_server.url, nats_prefix)
        started.append(system)
        return await system.start(**executor_overrides)

    yield start
    for system in started:
        with contextlib.suppress(Exception):
            await system.stop()


@pytest.fixture
async def make_pg_system(
    tmp_path: Path,
    nats_server: Any,
    nats_prefix: str,
    postgres_db: PostgresDatabase,
    postgres_schema: str,
) -> AsyncIterator[StartSystem]:
    """Start a system whose executor keeps runs and sessions in PostgreSQL."""
    started: list[System] = []

    async def start(**executor_overrides: Any) -> System:
        system = System(
            tmp=tmp_path,
            nats_url=nats_server.url,
            prefix=nats_prefix,
            database_url=postgres_db.dsn,
            sessions_url=postgres_db.dsn,
            postgres_schema=postgres_schema,
        )
        started.append(system)
        return await system.start(**executor_overrides)

    yield start
    for system in started:
        with contextlib.suppress(Exception):
            await system.stop()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server; a proxy from the environment must not catch it."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with FakeOpenAI() as fake:
        yield fake
