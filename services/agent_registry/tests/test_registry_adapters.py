"""Adapters against real infrastructure: read models, persistence settings, NATS.

One scenario suite runs the ListingStore and PositionStore ports against every
implementation (in memory, an SQLite file, a PostgreSQL schema). The NATS
catalogue and publisher run against a real nats-server, with a test prefix of
their own; outages are real (the test's own server is stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nats.js.errors
import psycopg
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from nats.js.kv import KeyValue
from pydantic import ValidationError
from registry_support import (
    CTX,
    PYTHON,
    SIMPLE,
    WORKFLOW,
    executor_document,
    executor_report,
    spec,
)

from agent_registry.adapters.grpc_api import (
    agent_to_proto,
    command_context,
    dict_to_struct,
    event_to_proto,
    expected,
    proto_status,
    spec_to_proto,
    spec_values,
    status_from_proto,
    struct_to_dict,
    timestamp,
    update_fields,
)
from agent_registry.adapters.memory import (
    InMemoryPublisher,
    InMemoryReadModel,
    InMemoryTemplateCatalog,
)
from agent_registry.adapters.nats_catalog import NatsTemplateCatalog
from agent_registry.adapters.nats_publisher import (
    AGENT_ID_HEADER,
    POSITION_HEADER,
    JetStreamPublisher,
)
from agent_registry.adapters.persistence import eventsourcing_env
from agent_registry.adapters.read_model import (
    MIGRATIONS,
    PostgresReadModel,
    read_model_for,
)
from agent_registry.application.listing import AgentListing
from agent_registry.application.ports import ListFilter, OutboundEvent
from agent_registry.application.records import AgentRecord
from agent_registry.application.registry import AgentRegistry
from agent_registry.config import Settings
from agent_registry.domain.agent import Agent, describe
from agent_registry.domain.spec import SPEC_FIELDS
from agent_registry.domain.status import Status
from agent_registry.errors import CatalogUnavailable, InvalidAgent
from agentrt.events.v1 import registry_events_pb2
from agentrt.registry.v1 import registry_pb2 as pb
from agentrt_kit.catalog import executor_key, open_bucket, publish_descriptor, publish_executor
from agentrt_kit.errors import InvalidArgument, Unavailable
from agentrt_kit.grpc.structs import plain
from agentrt_kit.nats import MSG_ID_HEADER, Names, NatsClient, StreamLimits
from agentrt_kit.settings import ConfigError, ServiceSettings, load_settings
from agentrt_kit.sql import MIGRATIONS_TABLE
from agentrt_testkit.postgres import PostgresDatabase

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
RELAY = "AgentRegistry.relay"
LIMITS = StreamLimits(3_600.0, 16 * 1024**2)  # the registry event stream's, in these tests
CATALOG = ServiceSettings().catalog_limits()  # as the services under test declare it


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until `condition()` holds, polling."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ read model suite


@dataclass
class Backend:
    """A registry application and the read model beside it; `replica()` opens another."""

    kind: str
    app: AgentRegistry
    store: Any
    settings: Settings | None = None
    opened: list[AgentRegistry] = field(default_factory=list)

    def replica(self) -> tuple[AgentRegistry, Any]:
        """A second application and read model on the same database (another replica)."""
        if self.settings is None:  # in memory: one process, one store
            return self.app, self.store
        app = AgentRegistry(eventsourcing_env(self.settings), self.app.catalog)
        self.opened.append(app)
        return app, read_model_for(app.recorder, app.name)


def sql_settings(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if kind == "sqlite":
        return Settings(persistence="sqlite", sqlite_path=tmp_path / "registry.sqlite3")
    db: PostgresDatabase = request.getfixturevalue("postgres_db")
    schema: str = request.getfixturevalue("postgres_schema")
    return Settings(
        persistence="postgres",
        postgres_dsn=db.dsn,
        postgres_schema=schema,
        postgres_pool_size=2,
        postgres_max_overflow=4,
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    catalog = InMemoryTemplateCatalog([SIMPLE, WORKFLOW])
    if request.param == "memory":
        app = AgentRegistry({"PERSISTENCE_MODULE": "eventsourcing.popo"}, catalog)
        yield Backend("memory", app, InMemoryReadModel(app.name))
        return
    settings = sql_settings(request.param, request, tmp_path)
    app = AgentRegistry(eventsourcing_env(settings), catalog)
    b = Backend(request.param, app, read_model_for(app.recorder, app.name), settings)
    try:
        yield b
    finally:
        for other in b.opened:
            other.close()
        app.close()


def record(agent_id: str, seq: int, **overrides: Any) -> AgentRecord:
    base = AgentRecord(
        agent_id=agent_id,
        version=1,
        seq=seq,
        spec={
            "name": f"agent {agent_id}",
            "template_id": "simple-test",
            "owner_id": "",
            "toolsets": [],
        },
        status="created",
        registered_at=T0,
        updated_at=T0 + timedelta(seconds=seq),
        created_by="tester",
        updated_by="tester",
    )
    spec_overrides = {k: overrides.pop(k) for k in ("template_id", "owner_id") if k in overrides}
    base.spec.update(spec_overrides)
    return replace(base, **overrides)


def listed(
    store: Any, where: ListFilter | None = None, after: int = 0, limit: int = 100
) -> list[str]:
    return [r.agent_id for r in store.query(where or ListFilter(), after, limit)]


def test_save_advances_the_position_and_refuses_a_replayed_batch(stores: Backend) -> None:
    store = stores.store
    assert store.position() == 0
    first = record("a1", 1)
    assert store.save([first], 2) is True
    assert store.position() == 2
    assert store.save([record("a2", 2)], 2) is False  # same position: applied elsewhere
    assert store.save([record("a1", 1, status="active", version=9)], 1) is False  # behind
    assert store.load(["a1", "a2"]) == {"a1": first}
    assert listed(store) == ["a1"]
    assert store.position() == 2
    assert store.save([], 5) is True  # a batch with no agent events still moves on
    assert store.position() == 5


def test_load_round_trips_records(stores: Backend) -> None:
    rich = record(
        "a1",
        7,
        version=12,
        spec={
            "name": "Ünïcødé 🤖",
            "template_id": "langgraph-workflow",
            "template_config": {"steps": [{"name": "s", "prompt": "p", "timeout": 3}], "n": None},
            "conversation_config": {"temperature": 0.25, "max_tokens": 1024},
            "metadata": {"deep": {"er": [1, 2.5, True, "x", {"k": []}]}},
            "toolsets": ["files", "web"],
            "description": "line one\nline 'two' \"quoted\"",
        },
        status="error",
        deleted=True,
        registered_at=datetime(2024, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        updated_at=datetime(2025, 6, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
        created_by="alice",
        updated_by="bob",
    )
    plain_record = record("a2", 8)
    assert stores.store.save([rich, plain_record], 3)
    loaded = stores.store.load(["a1", "a2", "missing"])
    assert loaded == {"a1": rich, "a2": plain_record}
    assert loaded["a1"].updated_at is not None
    assert loaded["a1"].updated_at.utcoffset() == timedelta(hours=2)
    assert stores.store.load([]) == {}
    # Large id sets are read in chunks.
    many = [f"x{i}" for i in range(1200)] + ["a2"]
    assert list(stores.store.load(many)) == ["a2"]


def test_save_replaces_the_row_of_an_agent(stores: Backend) -> None:
    store = stores.store
    store.save([record("a1", 1, owner_id="o1")], 1)
    changed = record("a1", 1, owner_id="o2", status="active", version=2)
    assert store.save([changed], 2)
    assert store.load(["a1"])["a1"] == changed
    assert listed(store, ListFilter(owner_id="o1")) == []
    assert listed(store, ListFilter(owner_id="o2", status="active")) == ["a1"]


def test_query_filters_orders_by_seq_and_hides_deleted(stores: Backend) -> None:
    store = stores.store
    store.save(
        [
            record("a3", 30, owner_id="o1"),
            record("a1", 10, owner_id="o1"),
            record("a2", 20, owner_id="o2", status="active"),
            record("a4", 40, owner_id="o1", deleted=True),
            record("a5", 50, template_id="langgraph-workflow", owner_id="o2", status="active"),
        ],
        60,
    )
    assert listed(store) == ["a1", "a2", "a3", "a5"]
    assert listed(store, after=10) == ["a2", "a3", "a5"]
    assert listed(store, after=30) == ["a5"]
    assert listed(store, after=50) == []
    assert listed(store, limit=2) == ["a1", "a2"]
    assert listed(store, after=10, limit=1) == ["a2"]
    assert listed(store, ListFilter(owner_id="o1")) == ["a1", "a3"]
    assert listed(store, ListFilter(status="active")) == ["a2", "a5"]
    assert listed(store, ListFilter(template_id="langgraph-workflow")) == ["a5"]
    assert listed(store, ListFilter(template_id="simple-test", status="active")) == ["a2"]
    assert listed(store, ListFilter(template_id="simple-test", owner_id="o2", status="active")) == [
        "a2"
    ]
    assert listed(store, ListFilter(owner_id="o3")) == []
    assert listed(store, ListFilter(owner_id="o1'; DROP TABLE agent_listing; --")) == []
    assert store.load(["a4"])["a4"].deleted is True  # hidden from lists, still loadable


def test_named_positions_never_go_backwards(stores: Backend) -> None:
    store = stores.store
    assert store.get_position(RELAY) == 0
    store.advance_position(RELAY, 5)
    assert store.get_position(RELAY) == 5
    store.advance_position(RELAY, 3)
    store.advance_position(RELAY, 5)
    assert store.get_position(RELAY) == 5
    store.advance_position(RELAY, 8)
    assert store.get_position(RELAY) == 8
    assert store.get_position("other.relay") == 0
    assert store.position() == 0  # the listing's own position is separate
    store.save([], 4)
    assert (store.position(), store.get_position(RELAY)) == (4, 8)


def test_replicas_sharing_a_database_converge(stores: Backend) -> None:
    app = stores.app
    for i in range(12):
        app.create_agent(f"a{i}", spec(name=f"agent {i}", owner_id=f"o{i % 2}"), None, CTX)
        if i % 3 == 0:
            app.set_status(f"a{i}", Status.ACTIVE, "", None, CTX)
        if i % 4 == 1:
            app.delete_agent(f"a{i}", None, CTX)
    other_app, other_store = stores.replica()
    replicas = [
        AgentListing(app, stores.store, batch_size=4),
        AgentListing(other_app, other_store, batch_size=4),
    ]
    head = replicas[0].head()
    barrier = threading.Barrier(2)
    reached: list[int] = []

    def run(listing: AgentListing) -> None:
        barrier.wait()
        reached.append(listing.catch_up())

    threads = [threading.Thread(target=run, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert reached == [head, head]
    reference = InMemoryReadModel(app.name)
    AgentListing(app, reference, batch_size=100).catch_up()
    ids = [f"a{i}" for i in range(12)]

    def docs(store: Any) -> dict[str, Any]:
        return {k: v.to_document() for k, v in store.load(ids).items()}

    assert docs(stores.store) == docs(reference)
    assert docs(other_store) == docs(reference)
    live = [f"a{i}" for i in range(12) if i % 4 != 1]
    states, _ = replicas[1].list(ListFilter(), size=100)
    assert [s.agent_id for s in states] == live
    states, _ = replicas[0].list(ListFilter(owner_id="o0", status="active"))
    assert [s.agent_id for s in states] == ["a0", "a6"]


# ------------------------------------------------------------------ SQL specifics


def migration_version(stores: Backend) -> list[tuple[Any, ...]]:
    assert stores.settings is not None
    if stores.kind == "sqlite":
        with sqlite3.connect(stores.settings.sqlite_path) as conn:
            return conn.execute(f"SELECT component, version FROM {MIGRATIONS_TABLE}").fetchall()
    assert stores.settings.postgres_dsn is not None
    with psycopg.connect(stores.settings.postgres_dsn.get_secret_value()) as conn:
        table = f'"{stores.settings.postgres_schema}".{MIGRATIONS_TABLE}'
        return conn.execute(f"SELECT component, version FROM {table}").fetchall()


@pytest.mark.parametrize("stores", ["sqlite", "postgres"], indirect=True)
def test_migrations_are_idempotent(stores: Backend) -> None:
    stores.store.save([record("a1", 1)], 1)
    again = read_model_for(stores.app.recorder, stores.app.name)
    assert again.migrate() == len(MIGRATIONS) == 1
    assert migration_version(stores) == [("agent_listing", 1)]
    assert again.load(["a1"]) == {"a1": record("a1", 1)}  # nothing was dropped
    assert again.position() == 1


def test_postgres_read_model_refuses_an_unsafe_schema_name() -> None:
    class Datastore:  # only what the constructor reads before checking the name
        schema = 'x"; DROP SCHEMA public; --'
        single_row_tracking = True

    with pytest.raises(ValueError, match="unusable schema name"):
        PostgresReadModel(Datastore(), "AgentRegistry")


# ------------------------------------------------------------------ settings and env


def test_sqlite_env_uses_an_absolute_path_and_creates_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(sqlite_path=Path("var/deep/registry.sqlite3"), aggregate_cache_size=0)
    env = eventsourcing_env(settings)
    assert env == {
        "IS_SNAPSHOTTING_ENABLED": "y",
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "var" / "deep" / "registry.sqlite3"),
        "SQLITE_LOCK_TIMEOUT": "10",
    }
    assert (tmp_path / "var" / "deep").is_dir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    env = eventsourcing_env(Settings(sqlite_path=Path("~/r.sqlite3")))
    assert env["SQLITE_DBNAME"] == str(tmp_path / "home" / "r.sqlite3")
    assert env["AGGREGATE_CACHE_MAXSIZE"] == "10000"


def test_postgres_env_is_taken_from_the_dsn() -> None:
    settings = Settings(
        persistence="postgres",
        postgres_dsn="postgresql://agent:s%40cret@db.example:6543/agents",
        postgres_schema="registry",
        postgres_pool_size=3,
        postgres_max_overflow=4,
        aggregate_cache_size=50,
    )
    assert eventsourcing_env(settings) == {
        "IS_SNAPSHOTTING_ENABLED": "y",
        "AGGREGATE_CACHE_MAXSIZE": "50",
        "PERSISTENCE_MODULE": "agent_registry.adapters.pg_store:BoundedPostgresFactory",
        "POSTGRES_DBNAME": "agents",
        "POSTGRES_HOST": "db.example",
        "POSTGRES_PORT": "6543",
        "POSTGRES_USER": "agent",
        "POSTGRES_PASSWORD": "s@cret",
        "POSTGRES_SCHEMA": "registry",
        "POSTGRES_POOL_SIZE": "3",
        "POSTGRES_MAX_OVERFLOW": "4",
        "POSTGRES_CONNECT_TIMEOUT": "5",
    }
    assert "s@cret" not in repr(settings)
    minimal = eventsourcing_env(Settings(persistence="postgres", postgres_dsn="dbname=reg"))
    assert (
        minimal["POSTGRES_DBNAME"],
        minimal["POSTGRES_HOST"],
        minimal["POSTGRES_PORT"],
        minimal["POSTGRES_USER"],
        minimal["POSTGRES_PASSWORD"],
    ) == ("reg", "localhost", "5432", "postgres", "")


def test_postgres_without_a_dsn_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_REGISTRY_PERSISTENCE", "postgres")
    monkeypatch.delenv("AGENTRT_REGISTRY_POSTGRES_DSN", raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings(Settings)
    assert str(info.value).startswith("invalid configuration: AGENTRT_REGISTRY_POSTGRES_DSN: ")
    assert "AGENTRT_REGISTRY_PERSISTENCE=postgres" in str(info.value)
    assert "?" not in str(info.value)
    with pytest.raises(ValidationError) as error:
        Settings(persistence="postgres", postgres_dsn=None)
    assert error.value.errors()[0]["loc"] == ("postgres_dsn",)
    monkeypatch.setenv("AGENTRT_REGISTRY_POSTGRES_DSN", "postgresql://u:pw@h/db")
    loaded = load_settings(Settings)
    assert loaded.postgres_dsn is not None
    assert loaded.postgres_dsn.get_secret_value() == "postgresql://u:pw@h/db"
    assert "pw@h" not in repr(loaded)


def test_invalid_settings_name_each_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_REGISTRY_PERSISTENCE", "mysql")
    monkeypatch.setenv("AGENTRT_REGISTRY_SNAPSHOT_INTERVAL", "1")
    monkeypatch.setenv("AGENTRT_REGISTRY_PORT", "70000")
    with pytest.raises(ConfigError) as info:
        load_settings(Settings)
    message = str(info.value)
    for name in (
        "AGENTRT_REGISTRY_PERSISTENCE",
        "AGENTRT_REGISTRY_SNAPSHOT_INTERVAL",
        "AGENTRT_REGISTRY_PORT",
    ):
        assert f"{name}: " in message


def test_settings_defaults_are_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PERSISTENCE", "SQLITE_PATH", "PORT", "POSTGRES_DSN"):
        monkeypatch.delenv(f"AGENTRT_REGISTRY_{name}", raising=False)
    settings = load_settings(Settings)
    assert (settings.persistence, settings.sqlite_path, settings.port, settings.postgres_dsn) == (
        "sqlite",
        Path("var/registry.sqlite3"),
        50051,
        None,
    )


def test_the_event_stream_limits_come_from_settings_and_bound_it_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("STREAM_MAX_AGE_DAYS", "STREAM_MAX_BYTES"):
        monkeypatch.delenv(f"AGENTRT_REGISTRY_{name}", raising=False)
    assert load_settings(Settings).stream_limits() == StreamLimits(30 * 86_400.0, 256 * 1024**2)
    monkeypatch.setenv("AGENTRT_REGISTRY_STREAM_MAX_BYTES", "4096")
    assert load_settings(Settings).stream_limits() == StreamLimits(30 * 86_400.0, 4096)
    monkeypatch.setenv("AGENTRT_REGISTRY_STREAM_MAX_BYTES", "-1")
    with pytest.raises(ConfigError, match="AGENTRT_REGISTRY_STREAM_MAX_BYTES: "):
        load_settings(Settings)


# ------------------------------------------------------------------ gRPC mapping


def test_plain_turns_integral_doubles_into_ints() -> None:
    assert plain(3.0) == 3
    assert isinstance(plain(3.0), int)
    assert isinstance(plain(-0.0), int)
    assert plain(2.5) == 2.5
    assert isinstance(plain(float(2**53 - 1)), int)
    for huge in (float(2**53), 1e20, -1e300):
        assert isinstance(plain(huge), float)  # beyond exact integers: left alone
    assert plain(float("inf")) == float("inf")
    assert plain(True) is True
    assert plain({"a": [1.0, {"b": 2.0, "c": "x"}], "d": None}) == {
        "a": [1, {"b": 2, "c": "x"}],
        "d": None,
    }
    assert isinstance(plain({"a": [1.0]})["a"][0], int)


def test_struct_round_trip_keeps_ints_as_ints() -> None:
    value = {"max_tokens": 200, "temperature": 0.5, "nested": {"list": [1, 2.5, "s", None, True]}}
    back = struct_to_dict(dict_to_struct(value))
    assert back == value
    assert isinstance(back["max_tokens"], int)


def test_update_fields_uses_the_mask_or_infers_populated_fields() -> None:
    request = pb.UpdateAgentRequest(
        agent_id="a1",
        spec=pb.AgentSpec(name="n", description="d", toolsets=["x"]),
        update_mask=field_mask_pb2.FieldMask(paths=["description", "owner_id", "description"]),
    )
    assert update_fields(request) == ["description", "owner_id"]  # de-duplicated, as given
    inferred = pb.UpdateAgentRequest(
        agent_id="a1", spec=pb.AgentSpec(name="n", toolsets=["x"], system_prompt="")
    )
    inferred.spec.metadata.SetInParent()  # set but empty: still named
    assert update_fields(inferred) == ["name", "metadata", "toolsets"]
    assert update_fields(pb.UpdateAgentRequest(agent_id="a1")) == []
    bad = pb.UpdateAgentRequest(update_mask=field_mask_pb2.FieldMask(paths=["name", "colour"]))
    with pytest.raises(InvalidAgent) as info:
        update_fields(bad)
    assert [v.field for v in info.value.violations] == ["update_mask.paths[1]"]


def test_spec_mapping_round_trips() -> None:
    values = {
        "name": "Bot",
        "template_id": "simple-test",
        "template_config": {"n": 3, "nested": {"x": [1.5]}},
        "toolsets": ["a", "b"],
        "owner_id": "o",
    }
    message = spec_to_proto(values)
    assert spec_values(message, SPEC_FIELDS) == {
        **{f: "" for f in SPEC_FIELDS},
        "metadata": {},
        "conversation_config": {},
        **values,
    }
    assert spec_values(message, ["toolsets", "name"]) == {"toolsets": ["a", "b"], "name": "Bot"}


def test_status_mapping_refuses_unknown_values() -> None:
    assert status_from_proto(pb.AGENT_STATUS_INACTIVE) == Status.INACTIVE
    for bad in (pb.AGENT_STATUS_UNSPECIFIED, 99, -1):
        with pytest.raises(InvalidArgument) as info:
            status_from_proto(bad)
        assert [v.field for v in info.value.violations] == ["status"]
    with pytest.raises(InvalidArgument) as info:
        status_from_proto(42, field="filter.status")
    assert info.value.violations[0].field == "filter.status"
    assert proto_status("") == pb.AGENT_STATUS_UNSPECIFIED
    assert proto_status("error") == pb.AGENT_STATUS_ERROR


def test_agent_and_event_protos_carry_every_field(app: AgentRegistry) -> None:
    state, _ = app.create_agent("a1", spec(conversation_config={"max_tokens": 5}), None, CTX)
    app.set_status("a1", Status.ACTIVE, "ready", None, CTX)
    message = agent_to_proto(app.get_agent("a1"))
    assert (message.id, message.version, message.status) == ("a1", 2, pb.AGENT_STATUS_ACTIVE)
    assert message.spec.conversation_config["max_tokens"] == 5
    assert message.created_at.ToDatetime(tzinfo=UTC) == state.created_at
    entries, _ = app.list_events("a1")
    changed = event_to_proto(entries[1])
    assert (changed.type, changed.from_status, changed.to_status, changed.reason) == (
        "status_changed",
        pb.AGENT_STATUS_CREATED,
        pb.AGENT_STATUS_ACTIVE,
        "ready",
    )
    registered = event_to_proto(entries[0])
    assert registered.from_status == pb.AGENT_STATUS_UNSPECIFIED
    assert registered.changes["name"] == "Support bot"


def test_expected_version_and_command_context() -> None:
    assert expected(pb.UpdateAgentRequest()) is None
    assert expected(pb.UpdateAgentRequest(expected_version=0)) == 0
    assert expected(pb.DeleteAgentRequest(expected_version=4)) == 4
    ctx = command_context()  # outside a call: anonymous, with a fresh request id
    assert ctx.actor == "anonymous"
    assert ctx.request_id
    assert command_context().request_id != ctx.request_id


# ------------------------------------------------------------------ NATS catalogue


@pytest.fixture
async def client(nats_server: Any) -> AsyncIterator[NatsClient]:
    nc = NatsClient(nats_server.url, name="registry-test")
    await nc.start()
    assert await nc.wait_connected(5)
    try:
        yield nc
    finally:
        await nc.close()


async def bucket(client: NatsClient, prefix: str) -> KeyValue:
    kv = await open_bucket(client.js, Names(prefix), CATALOG)
    for descriptor in (SIMPLE, WORKFLOW):
        await publish_descriptor(kv, descriptor.to_document())
    return kv


async def started_catalog(
    client: NatsClient, prefix: str, lookup_timeout: float = 1.0
) -> NatsTemplateCatalog:
    catalog = NatsTemplateCatalog(
        client, Names(prefix), limits=CATALOG, lookup_timeout=lookup_timeout
    )
    await catalog.start()
    await asyncio.wait_for(catalog.synced.wait(), 5)
    return catalog


async def get(catalog: NatsTemplateCatalog, template_id: str, version: str | None = None) -> Any:
    """`catalog.get` from a worker thread, as the registry calls it."""
    return await asyncio.to_thread(catalog.get, template_id, version)


async def test_catalog_serves_published_descriptors(client: NatsClient, nats_prefix: str) -> None:
    kv = await bucket(client, nats_prefix)
    catalog = await started_catalog(client, nats_prefix)
    try:
        assert await get(catalog, "simple-test") == SIMPLE
        assert await get(catalog, "langgraph-workflow", "2.1.0") == WORKFLOW
        assert await get(catalog, "no-such-template") is None
        assert await get(catalog, "langgraph-workflow", "9.9.9") is None
        assert await get(catalog, "bad id!") is None  # not even a valid key
        newer = replace(SIMPLE, version="1.1.0", description="newer")
        await publish_descriptor(kv, newer.to_document())

        async def latest_is_newer() -> bool:
            return (await get(catalog, "simple-test")) == newer

        await eventually(latest_is_newer)
        assert await get(catalog, "simple-test", "1.0.0") == SIMPLE
    finally:
        await catalog.stop()


async def test_catalog_looks_up_a_key_it_has_not_seen(client: NatsClient, nats_prefix: str) -> None:
    kv = await bucket(client, nats_prefix)
    catalog = await started_catalog(client, nats_prefix)
    await catalog.stop()  # no watcher: only a direct lookup can find new keys
    fresh = replace(SIMPLE, id="fresh-template", version="0.1.0")
    await publish_descriptor(kv, fresh.to_document())
    await kv.delete("fresh-template/0.1.0")
    assert await get(catalog, "fresh-template") == fresh
    assert await get(catalog, "fresh-template", "0.1.0") is None  # deleted: not found
    await kv.delete("fresh-template")
    assert await get(catalog, "fresh-template") == fresh  # found once: now cached
    await kv.put("empty-template", b"")
    assert await get(catalog, "empty-template") is None


async def test_catalog_forgets_deleted_templates(client: NatsClient, nats_prefix: str) -> None:
    kv = await bucket(client, nats_prefix)
    catalog = await started_catalog(client, nats_prefix)
    try:
        assert await get(catalog, "langgraph-workflow") == WORKFLOW
        await kv.delete("langgraph-workflow")

        async def gone() -> bool:
            return (await get(catalog, "langgraph-workflow")) is None

        await eventually(gone)
        await kv.purge("simple-test")
        await eventually(lambda: _is_none(get(catalog, "simple-test")))
        assert await get(catalog, "langgraph-workflow", "2.1.0") == WORKFLOW
    finally:
        await catalog.stop()


async def _is_none(value: Awaitable[Any]) -> bool:
    return (await value) is None


async def test_catalog_ignores_and_logs_invalid_descriptors(
    client: NatsClient, nats_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    kv = await bucket(client, nats_prefix)
    catalog = await started_catalog(client, nats_prefix)
    try:
        with caplog.at_level(logging.ERROR, logger="agent_registry.adapters.nats_catalog"):
            bad_schema = {"id": "broken", "version": "1", "config_schema": {"type": 5}}
            await kv.put("broken", json.dumps(bad_schema).encode())
            await kv.put("garbled", b"{not json")

            async def logged() -> bool:
                keys = {getattr(r, "key", None) for r in caplog.records}
                return {"broken", "garbled"} <= keys

            await eventually(logged)
            assert await get(catalog, "broken") is None
            assert await get(catalog, "garbled") is None
            # A bad descriptor over a good one leaves the good one in service.
            await kv.put("simple-test", json.dumps({"id": "simple-test"}).encode())

            async def logged_again() -> bool:
                return "simple-test" in {getattr(r, "key", None) for r in caplog.records}

            await eventually(logged_again)
            assert await get(catalog, "simple-test") == SIMPLE
        messages = {r.getMessage() for r in caplog.records}
        assert messages == {"ignoring bad template descriptor"}
        assert await get(catalog, "langgraph-workflow") == WORKFLOW
    finally:
        await catalog.stop()


async def test_catalog_reads_executor_entries_the_watch_has_not_delivered(
    client: NatsClient, nats_prefix: str
) -> None:
    kv = await bucket(client, nats_prefix)
    catalog = await started_catalog(client, nats_prefix)
    await catalog.stop()  # no watcher: only a direct read can find the entry
    assert not (await asyncio.to_thread(catalog.executors)).known
    await publish_executor(kv, executor_document(executor_report(providers=("offline",))))
    fleet = await asyncio.to_thread(catalog.executors)
    assert fleet.providers == {"offline"}


async def test_catalog_reports_what_the_live_executors_publish(
    client: NatsClient, nats_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    kv = await bucket(client, nats_prefix)
    catalog = await started_catalog(client, nats_prefix)
    try:
        assert not catalog.executors().known  # no executor has published
        one = executor_report(
            "one", ("offline", "gpt"), runtimes=(PYTHON,), run_timeout_seconds=300
        )
        two = executor_report("two", ("offline",), run_timeout_seconds=60, max_steps=20)
        with caplog.at_level(logging.ERROR, logger="agent_registry.adapters.nats_catalog"):
            # Written first, so the watch has it once it has the others.
            await kv.put(executor_key("broken"), b'{"executor_id": "broken"}')
            for report in (one, two):
                await publish_executor(kv, executor_document(report))

            async def both_seen() -> bool:
                return catalog.executors().providers == {"offline"}

            await eventually(both_seen)
            for _ in range(3):  # every read parses the entries again only when they changed
                assert catalog.executors().limits == {"run_timeout_seconds": 60, "max_steps": 20}
            assert catalog.executors().runtimes == (PYTHON,)  # one's sandbox is available
        # The bad entry is logged once, not on every read; templates are untouched by all this.
        assert [r.getMessage() for r in caplog.records].count("ignoring bad executor entry") == 1
        assert await get(catalog, "simple-test") == SIMPLE
        await kv.delete(executor_key("two"))

        async def only_one_left() -> bool:
            return catalog.executors().providers == {"offline", "gpt"}

        await eventually(only_one_left)
        assert catalog.executors().limits == {"run_timeout_seconds": 300}
    finally:
        await catalog.stop()


async def test_catalog_serves_its_cache_while_nats_is_down(
    make_nats_server: Callable[[], Any], nats_prefix: str
) -> None:
    server = make_nats_server()
    own = NatsClient(server.url, name="registry-outage-test")
    await own.start()
    assert await own.wait_connected(5)
    catalog: NatsTemplateCatalog | None = None
    try:
        await bucket(own, nats_prefix)
        catalog = await started_catalog(own, nats_prefix)
        assert await get(catalog, "simple-test") == SIMPLE
        server.stop()

        async def disconnected() -> bool:
            return not own.connected

        await eventually(disconnected)
        assert await get(catalog, "simple-test") == SIMPLE
        assert await get(catalog, "simple-test", "1.0.0") == SIMPLE
        with pytest.raises(CatalogUnavailable):
            await get(catalog, "never-seen")
        with pytest.raises(CatalogUnavailable):
            await get(catalog, "langgraph-workflow", "0.0.1")
        # A registry validating against the catalogue reports the outage, not "unknown".
        app = AgentRegistry({"PERSISTENCE_MODULE": "eventsourcing.popo"}, catalog)
        with pytest.raises(CatalogUnavailable):
            await asyncio.to_thread(
                app.create_agent, "a1", spec(template_id="never-seen"), None, CTX
            )
        assert (await asyncio.to_thread(app.create_agent, "a2", spec(), None, CTX))[0].version == 1
    finally:
        if catalog is not None:
            await catalog.stop()
        await own.close()


async def test_catalog_follows_updates_after_nats_restarts(
    make_nats_server: Callable[[], Any], nats_prefix: str
) -> None:
    server = make_nats_server()
    own = NatsClient(server.url, name="registry-restart-test")
    await own.start()
    assert await own.wait_connected(5)
    catalog = NatsTemplateCatalog(own, Names(nats_prefix), limits=CATALOG, recheck_interval=0.1)
    try:
        await bucket(own, nats_prefix)
        await catalog.start()
        await asyncio.wait_for(catalog.synced.wait(), 5)
        assert await get(catalog, "simple-test") == SIMPLE
        server.stop()

        async def disconnected() -> bool:
            return not own.connected

        async def connected() -> bool:
            return own.connected

        await eventually(disconnected)
        server.start()
        await eventually(connected, timeout=10)
        kv = await open_bucket(own.js, Names(nats_prefix), CATALOG)
        newer = replace(SIMPLE, version="1.1.0")
        await publish_descriptor(kv, newer.to_document())
        await kv.delete("langgraph-workflow")

        async def caught_up() -> bool:
            return (await get(catalog, "simple-test")) == newer and (
                await get(catalog, "langgraph-workflow")
            ) is None

        await eventually(caught_up, timeout=10)  # the old watch died with the server
    finally:
        await catalog.stop()
        await own.close()


async def test_catalog_lookup_gives_up_when_nats_hangs(
    make_nats_server: Callable[[], Any], nats_prefix: str
) -> None:
    server = make_nats_server()
    own = NatsClient(server.url, name="registry-hang-test")
    await own.start()
    assert await own.wait_connected(5)
    catalog: NatsTemplateCatalog | None = None
    try:
        await bucket(own, nats_prefix)
        catalog = await started_catalog(own, nats_prefix, lookup_timeout=0.3)
        with server.paused():
            started = asyncio.get_running_loop().time()
            with pytest.raises(CatalogUnavailable):
                await get(catalog, "never-seen")
            assert asyncio.get_running_loop().time() - started < 2
            assert await get(catalog, "simple-test") == SIMPLE  # cached: no round trip
    finally:
        if catalog is not None:
            await catalog.stop()
        await own.close()


# ------------------------------------------------------------------ JetStream publisher


def outbound(app: AgentRegistry) -> list[OutboundEvent]:
    """Every agent event of `app` as the relay would publish it."""
    events = []
    for n in app.recorder.select_notifications(start=1, limit=1000):
        event = app.mapper.to_domain_event(n)
        if isinstance(event, Agent.Event):
            events.append(OutboundEvent(f"{app.name}:{n.id}", n.id, describe(event)))
    return events


@pytest.fixture
def history(app: AgentRegistry) -> list[OutboundEvent]:
    app.create_agent("a1", spec(conversation_config={"max_tokens": 7}), None, CTX)
    app.update_agent("a1", {"description": "d"}, None, CTX)
    app.set_status("a1", Status.ACTIVE, "go", None, CTX)
    app.create_agent("a2", spec(name="Other"), None, CTX)
    app.delete_agent("a1", None, CTX)
    return outbound(app)


async def test_publisher_creates_the_stream_and_sends_decodable_events(
    client: NatsClient, nats_prefix: str, history: list[OutboundEvent]
) -> None:
    publisher = JetStreamPublisher(client, Names(nats_prefix), limits=LIMITS)
    stream = f"{nats_prefix}_REGISTRY".upper()
    with pytest.raises(nats.js.errors.NotFoundError):
        await client.js.stream_info(stream)
    await publisher.publish(history)
    info = await client.js.stream_info(stream)
    assert info.config.subjects == [f"{nats_prefix}.registry.>"]
    assert info.state.messages == len(history) == 5
    decoded = []
    for seq, event in enumerate(history, start=1):
        msg = await client.js.get_msg(stream, seq=seq)
        assert msg.subject == f"{nats_prefix}.registry.agent.{event.entry.type}"
        assert msg.headers is not None
        assert msg.headers[MSG_ID_HEADER] == event.event_id
        assert msg.headers[POSITION_HEADER] == str(event.position)
        assert msg.headers[AGENT_ID_HEADER] == event.entry.agent_id
        decoded.append(registry_events_pb2.AgentChanged.FromString(msg.data))
    assert [(d.type, d.agent_id, d.version) for d in decoded] == [
        ("registered", "a1", 1),
        ("configuration_changed", "a1", 2),
        ("status_changed", "a1", 3),
        ("registered", "a2", 1),
        ("deleted", "a1", 4),
    ]
    registered, changed, status = decoded[:3]
    assert registered.event_id == history[0].event_id
    assert registered.position == history[0].position
    assert registered.to_status == pb.AGENT_STATUS_CREATED
    assert registered.changes["conversation_config"]["max_tokens"] == 7
    assert registered.occurred_at.ToDatetime(tzinfo=UTC) == history[0].entry.occurred_at
    assert (registered.actor, registered.request_id) == ("tester", "req-1")
    assert list(changed.changed_fields) == ["description"]
    assert (status.from_status, status.to_status) == (
        pb.AGENT_STATUS_CREATED,
        pb.AGENT_STATUS_ACTIVE,
    )


@dataclass
class Bus:
    """An EventPublisher and a way to read back what the bus holds."""

    connect: Callable[[], Any]  # a (re)started publisher on the same bus
    stored: Callable[[], Awaitable[list[str]]]  # event ids held, in order


@pytest.fixture(params=["memory", "jetstream"])
def bus(request: pytest.FixtureRequest) -> Bus:
    if request.param == "memory":
        twin = InMemoryPublisher()

        async def held_in_memory() -> list[str]:
            return [e.event_id for e in twin.events]

        return Bus(lambda: twin, held_in_memory)
    client: NatsClient = request.getfixturevalue("client")
    names = Names(request.getfixturevalue("nats_prefix"))

    async def held_in_stream() -> list[str]:
        stream = names.stream("registry")
        last = (await client.js.stream_info(stream)).state.last_seq
        msgs = [await client.js.get_msg(stream, seq=seq) for seq in range(1, last + 1)]
        return [m.headers[MSG_ID_HEADER] for m in msgs if m.headers]

    return Bus(lambda: JetStreamPublisher(client, names, limits=LIMITS), held_in_stream)


async def test_publishing_the_same_events_again_stores_them_once(
    bus: Bus, history: list[OutboundEvent]
) -> None:
    publisher = bus.connect()
    assert await publisher.last_position() == 0
    await publisher.publish(history[:3])
    assert await publisher.last_position() == history[2].position
    restarted = bus.connect()
    await restarted.publish(history)  # a relay that lost its position re-sends all
    await restarted.publish(history[1:2])
    await restarted.publish([])
    assert await bus.stored() == [e.event_id for e in history]
    assert await restarted.last_position() == history[-1].position


async def test_two_relays_publishing_the_same_log_store_each_event_once(
    bus: Bus, history: list[OutboundEvent]
) -> None:
    one, other = bus.connect(), bus.connect()
    await one.publish(history[:2])
    await other.publish(history[:4])  # reads the stream's tail: sends the last two
    await one.publish(history)  # knows an older tail: refused, then sends only what is new
    assert await bus.stored() == [e.event_id for e in history]
    assert await one.last_position() == await other.last_position() == history[-1].position


async def test_last_position_ignores_messages_without_a_position(
    client: NatsClient, nats_prefix: str, history: list[OutboundEvent]
) -> None:
    publisher = JetStreamPublisher(client, Names(nats_prefix), limits=LIMITS)
    await publisher.publish(history)
    await client.js.publish(f"{nats_prefix}.registry.note", b"not an agent event")
    assert await publisher.last_position() == 0  # unknown: the relay's own tracking decides


async def test_publisher_recreates_a_deleted_stream(
    client: NatsClient, nats_prefix: str, history: list[OutboundEvent]
) -> None:
    publisher = JetStreamPublisher(client, Names(nats_prefix), limits=LIMITS)
    await publisher.publish(history[:2])
    await client.js.delete_stream(publisher.stream)  # an operator removed it
    assert await publisher.last_position() == 0
    await publisher.publish(history)
    info = await client.js.stream_info(publisher.stream)
    assert info.state.messages == len(history)
    assert await publisher.last_position() == history[-1].position


async def test_publisher_reports_an_outage_as_unavailable(
    make_nats_server: Callable[[], Any], nats_prefix: str, history: list[OutboundEvent]
) -> None:
    server = make_nats_server()
    own = NatsClient(server.url, name="registry-publisher-outage")
    await own.start()
    assert await own.wait_connected(5)
    try:
        publisher = JetStreamPublisher(own, Names(nats_prefix), limits=LIMITS, ack_timeout=1.0)
        await publisher.publish(history[:2])
        server.stop()

        async def disconnected() -> bool:
            return not own.connected

        await eventually(disconnected)
        with pytest.raises(Unavailable):
            await publisher.publish(history[2:])
        with pytest.raises(Unavailable):
            await publisher.last_position()
        server.start()

        async def reconnected() -> bool:
            return own.connected

        await eventually(reconnected, timeout=10)
        await publisher.publish(history)  # the relay re-sends the whole batch
        assert await publisher.last_position() == history[-1].position
        info = await own.js.stream_info(publisher.stream)
        assert info.state.messages == len(history)
    finally:
        await own.close()


async def test_publisher_gives_up_on_unacknowledged_events(
    make_nats_server: Callable[[], Any], nats_prefix: str, history: list[OutboundEvent]
) -> None:
    server = make_nats_server()
    own = NatsClient(server.url, name="registry-publisher-hang")
    await own.start()
    assert await own.wait_connected(5)
    try:
        publisher = JetStreamPublisher(own, Names(nats_prefix), limits=LIMITS, ack_timeout=0.3)
        await publisher.publish(history[:1])
        with server.paused(), pytest.raises(Unavailable, match="publishing agent events failed"):
            await publisher.publish(history[1:])
        await publisher.publish(history)  # retried once NATS answers again
        assert await publisher.last_position() == history[-1].position
        info = await own.js.stream_info(publisher.stream)
        assert info.state.messages == len(history)
    finally:
        await own.close()


async def test_a_nats_crash_mid_batch_leaves_no_gap_in_the_stream(
    make_nats_server: Callable[[], Any], nats_prefix: str, history: list[OutboundEvent]
) -> None:
    # Killed mid-batch, NATS loses what nats-py had written; nats-py sends what it
    # buffered meanwhile once reconnected. Events stored after lost ones would make the
    # relay resume after them and never send the lost ones (pipelined publishing did).
    server = make_nats_server()
    own = NatsClient(server.url, name="registry-publisher-crash")
    await own.start()
    assert await own.wait_connected(5)
    events = [OutboundEvent(f"AgentRegistry:{p}", p, history[0].entry) for p in range(1, 5001)]
    try:
        publisher = JetStreamPublisher(own, Names(nats_prefix), limits=LIMITS, ack_timeout=2.0)
        await publisher.publish(events[:1])
        sending = asyncio.create_task(publisher.publish(events[1:]))
        await asyncio.sleep(0.05)  # some of the batch is stored, some on its way
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)
        with contextlib.suppress(Unavailable):  # or sent again at once, once NATS is back
            await sending
        for _ in range(100):  # what the relay does: resume after the stream's last position
            try:
                held = await publisher.last_position()
                if held == len(events):
                    break
                await publisher.publish(events[held:])
            except Unavailable:
                await asyncio.sleep(0.2)
        info = await own.js.stream_info(publisher.stream)
        stored = [await own.js.get_msg(publisher.stream, seq=seq) for seq in range(1, 5001)]
        assert info.state.messages == len(events)
        assert [int((m.headers or {})[POSITION_HEADER]) for m in stored] == list(range(1, 5001))
    finally:
        await own.close()


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 24, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(2030, 6, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=-7))),
    ],
)
def test_timestamps_are_exact_to_the_microsecond(moment: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    assert timestamp(moment) == expected
    assert timestamp(moment).ToDatetime(tzinfo=UTC) == moment
