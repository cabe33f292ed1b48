"""Fixtures for the registry's tests: descriptors, in-memory apps, and real servers.

`registry` runs the real service (gRPC server, NATS relay, template catalogue)
in the test's event loop, on SQLite and on PostgreSQL (each test its own file
or schema, its own NATS prefix).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.kv import KeyValue
from registry_support import FLOW, SIMPLE, TASKS, WORKFLOW, Registry

from agent_registry.adapters.memory import InMemoryReadModel, InMemoryTemplateCatalog
from agent_registry.application.listing import AgentListing
from agent_registry.application.registry import AgentRegistry
from agent_registry.config import Settings
from agentrt.registry.v1 import registry_pb2_grpc as pb_grpc
from agentrt_kit.catalog import open_bucket, publish_descriptor
from agentrt_kit.nats import Names
from agentrt_testkit.postgres import PostgresDatabase


@pytest.fixture
def catalog() -> InMemoryTemplateCatalog:
    return InMemoryTemplateCatalog([SIMPLE, WORKFLOW, FLOW, TASKS])


@pytest.fixture
def app(catalog: InMemoryTemplateCatalog) -> AgentRegistry:
    """The application on in-memory persistence."""
    return AgentRegistry({"PERSISTENCE_MODULE": "eventsourcing.popo"}, catalog, snapshot_interval=5)


@pytest.fixture
def listing(app: AgentRegistry) -> AgentListing:
    return AgentListing(app, InMemoryReadModel(app.name), batch_size=3)


# ------------------------------------------------------------------ real service


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Persistence settings: an SQLite file, or a PostgreSQL schema of this test's own."""
    if request.param == "sqlite":
        return {"persistence": "sqlite", "sqlite_path": tmp_path / "registry.sqlite3"}
    db: PostgresDatabase = request.getfixturevalue("postgres_db")
    schema: str = request.getfixturevalue("postgres_schema")
    return {"persistence": "postgres", "postgres_dsn": db.dsn, "postgres_schema": schema}


@pytest.fixture
async def catalog_kv(nats_server: Any, nats_prefix: str) -> AsyncIterator[KeyValue]:
    """The template bucket of this test's prefix, holding SIMPLE, WORKFLOW, FLOW and TASKS."""
    nc = await nats.connect(nats_server.url)
    kv = await open_bucket(nc.jetstream(), Names(nats_prefix), Settings().catalog_limits())
    for descriptor in (SIMPLE, WORKFLOW, FLOW, TASKS):
        await publish_descriptor(kv, descriptor.to_document())
    yield kv
    await nc.close()


@pytest.fixture
def make_settings(
    backend: dict[str, Any], nats_server: Any, nats_prefix: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "port": 0,
            "nats_url": nats_server.url,
            "nats_prefix": nats_prefix,
            "service_token": None,
            "snapshot_interval": 10,
            **backend,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def registry(
    make_settings: Callable[..., Settings], catalog_kv: KeyValue
) -> AsyncIterator[Registry]:
    service = await Registry(make_settings()).start()
    try:
        yield service
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


@pytest.fixture
def stub(registry: Registry) -> pb_grpc.AgentRegistryStub:
    return registry.stub()
