"""The application layer on in-memory persistence: commands, queries, listing, relay.

Concurrency is real (threads against one application); the only test double
beyond the in-memory twins is a registry whose `save` refuses a few writes, to
make write collisions deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from registry_support import CTX, WORKFLOW, executor_report, spec

from agent_registry.adapters.memory import (
    InMemoryPublisher,
    InMemoryReadModel,
    InMemoryTemplateCatalog,
)
from agent_registry.application.listing import AgentListing, follow
from agent_registry.application.ports import ListFilter
from agent_registry.application.records import AgentRecord
from agent_registry.application.registry import AgentRegistry, encode_token
from agent_registry.application.relay import Relay
from agent_registry.domain.agent import Agent, AgentName, CommandContext, agent_uuid, name_uuid
from agent_registry.domain.spec import MAX_SPEC_BYTES
from agent_registry.domain.status import Status
from agent_registry.errors import (
    AgentAlreadyExists,
    AgentNotFound,
    CatalogUnavailable,
    ConcurrentModification,
    IllegalStatusTransition,
    InvalidAgent,
    NameTaken,
    VersionMismatch,
)
from agentrt_kit.concurrency import BlockingRunner
from agentrt_kit.errors import InvalidArgument, Unavailable

T = TypeVar("T")
THREADS = 16
WORKFLOW_SPEC = {
    "template_id": "langgraph-workflow",
    "template_version_id": "2.1.0",
    "template_config": {"steps": [{"name": "s", "prompt": "p"}]},
}


def fields(err: InvalidArgument) -> set[str]:
    return {v.field for v in err.violations}


def create(app: AgentRegistry, agent_id: str, **overrides: Any) -> int:
    state, _ = app.create_agent(agent_id, spec(**overrides), None, CTX)
    return state.version


def history(app: AgentRegistry, agent_id: str) -> list[str]:
    entries, _ = app.list_events(agent_id, 1000)
    return [e.type for e in entries]


def name_holder(app: AgentRegistry, name: str) -> tuple[str | None, int]:
    index: AgentName = app.repository.get(name_uuid(name))
    return index.holder, index.version


def ids(states: Sequence[Any]) -> list[str]:
    return [s.agent_id for s in states]


@pytest.fixture
def interleaving() -> Iterator[None]:
    """Switch threads very often, so concurrent commands really interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def all_at_once(count: int, fn: Callable[[int], T]) -> list[T | Exception]:
    """Run fn(0..count-1) in `count` threads released together; results or errors."""
    barrier = threading.Barrier(count)

    def run(i: int) -> T | Exception:
        barrier.wait()
        try:
            return fn(i)
        except Exception as e:
            return e

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


# ------------------------------------------------------------------ create


def test_create_without_an_id_generates_a_uuid(app: AgentRegistry) -> None:
    state, warnings = app.create_agent("", spec(), None, CTX)
    assert uuid.UUID(state.agent_id).version == 4
    assert app.get_agent(state.agent_id).spec["name"] == "Support bot"
    assert warnings == [
        "no template_version_id: the agent follows the latest version of 'simple-test' (now 1.0.0)"
    ]


def test_create_with_a_pinned_template_version_has_no_warning(app: AgentRegistry) -> None:
    state, warnings = app.create_agent("w1", {"name": "W", **WORKFLOW_SPEC}, None, CTX)
    assert warnings == []
    assert (state.version, state.status, state.created_by) == (1, "created", "tester")
    assert state.created_at == state.updated_at


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (None, "created"),
        (Status.CREATED, "created"),
        (Status.ACTIVE, "active"),
        (Status.INACTIVE, "inactive"),
    ],
)
def test_agents_start_created_active_or_inactive(
    app: AgentRegistry, requested: Status | None, expected: str
) -> None:
    state, _ = app.create_agent("a1", spec(), requested, CTX)
    assert state.status == expected
    assert history(app, "a1") == ["registered"]


def test_an_agent_may_start_in_error(app: AgentRegistry) -> None:
    app.create_agent("a1", spec(), Status.ERROR, CTX)
    assert app.get_agent("a1").status == Status.ERROR


def test_create_requires_name_and_template(app: AgentRegistry) -> None:
    with pytest.raises(InvalidAgent) as info:
        app.create_agent("a1", {}, None, CTX)
    assert [(v.field, v.description) for v in info.value.violations] == [
        ("spec.name", "is required"),
        ("spec.template_id", "is required"),
    ]
    with pytest.raises(InvalidAgent) as info:
        app.create_agent("a1", spec(name=7, template_id=""), None, CTX)
    assert fields(info.value) == {"spec.name", "spec.template_id"}


def test_create_reports_unknown_fields_and_oversized_specs(app: AgentRegistry) -> None:
    with pytest.raises(InvalidAgent) as info:
        app.create_agent("a1", spec(colour="red"), None, CTX)
    assert fields(info.value) == {"spec.colour"}
    huge = {"blob": "x" * MAX_SPEC_BYTES}
    with pytest.raises(InvalidAgent) as info:
        app.create_agent("a1", spec(metadata=huge), None, CTX)
    assert fields(info.value) == {"spec"}


def test_create_trims_the_name(app: AgentRegistry) -> None:
    state, _ = app.create_agent("a1", spec(name="  Bot  "), None, CTX)
    assert state.spec["name"] == "Bot"


def test_catalog_outage_is_unavailable_only_when_nothing_else_is_wrong(
    app: AgentRegistry, catalog: InMemoryTemplateCatalog
) -> None:
    catalog.available = False
    with pytest.raises(CatalogUnavailable):
        app.create_agent("a1", spec(), None, CTX)
    with pytest.raises(InvalidAgent) as info:
        app.create_agent("a1", spec(name=" ", toolsets=["x", "x"]), None, CTX)
    assert fields(info.value) == {"spec.name", "spec.toolsets[1]"}
    catalog.available = True
    assert create(app, "a1") == 1


def test_template_problems_are_not_checked_against_a_bad_template_id(
    app: AgentRegistry, catalog: InMemoryTemplateCatalog
) -> None:
    catalog.available = False  # would raise if consulted
    with pytest.raises(InvalidAgent) as info:
        app.create_agent("a1", spec(template_id="bad id"), None, CTX)
    assert fields(info.value) == {"spec.template_id"}


def test_duplicate_live_id_is_refused_without_touching_the_name(app: AgentRegistry) -> None:
    create(app, "a1", name="One")
    with pytest.raises(AgentAlreadyExists):
        create(app, "a1", name="Two")
    assert create(app, "a2", name="Two") == 1
    assert history(app, "a1") == ["registered"]


# ------------------------------------------------------------------ update


def test_update_with_unchanged_values_records_no_event(app: AgentRegistry) -> None:
    create(app, "a1", description="same")
    state, _ = app.update_agent(
        "a1", {"description": "same", "name": "Support bot"}, expected_version=1, ctx=CTX
    )
    assert state.version == 1
    assert history(app, "a1") == ["registered"]


def test_update_records_who_changed_what(app: AgentRegistry) -> None:
    create(app, "a1")
    bob = CommandContext(actor="bob", request_id="r-9")
    state, warnings = app.update_agent("a1", {"owner_id": "team-b"}, None, bob)
    assert (state.version, state.updated_by, state.created_by, warnings) == (
        2,
        "bob",
        "tester",
        [],
    )
    assert state.updated_at > state.created_at
    last = app.list_events("a1")[0][-1]
    assert (last.type, last.changes, last.actor, last.request_id) == (
        "configuration_changed",
        {"owner_id": "team-b"},
        "bob",
        "r-9",
    )


def test_rename_moves_the_name_index(app: AgentRegistry) -> None:
    create(app, "a1", name="Alpha")
    app.update_agent("a1", {"name": " Beta "}, None, CTX)
    assert app.get_agent("a1").spec["name"] == "Beta"
    assert name_holder(app, "alpha") == (None, 2)  # claimed, released
    assert name_holder(app, "beta") == ("a1", 1)
    create(app, "a2", name="ALPHA")
    assert name_holder(app, "alpha") == ("a2", 3)
    with pytest.raises(NameTaken) as info:
        app.update_agent("a2", {"name": "beta"}, None, CTX)
    assert info.value.metadata == {"name": "beta", "holder": "a1"}
    assert app.get_agent("a2").version == 1


def test_case_only_rename_keeps_the_name_claimed(app: AgentRegistry) -> None:
    create(app, "a1", name="Alpha")
    state, _ = app.update_agent("a1", {"name": "ALPHA"}, None, CTX)
    assert (state.spec["name"], state.version) == ("ALPHA", 2)
    assert name_holder(app, "alpha") == ("a1", 1)  # never released
    with pytest.raises(NameTaken):
        create(app, "a2", name="alpha")


def test_update_with_the_expected_version_succeeds_and_a_stale_one_changes_nothing(
    app: AgentRegistry,
) -> None:
    create(app, "a1")
    state, _ = app.update_agent("a1", {"description": "v2"}, 1, CTX)
    assert state.version == 2
    with pytest.raises(VersionMismatch) as info:
        app.update_agent("a1", {"description": "stale"}, 1, CTX)
    assert info.value.metadata == {"agent_id": "a1", "expected": "1", "actual": "2"}
    assert app.get_agent("a1").spec["description"] == "v2"


def test_update_revalidates_the_template_only_when_template_fields_change(
    app: AgentRegistry, catalog: InMemoryTemplateCatalog
) -> None:
    create(app, "a1")
    catalog.available = False
    state, warnings = app.update_agent("a1", {"description": "no catalogue needed"}, None, CTX)
    assert (state.version, warnings) == (2, [])
    with pytest.raises(CatalogUnavailable):
        app.update_agent("a1", {"template_config": {"response_prefix": "!"}}, None, CTX)
    catalog.available = True
    state, warnings = app.update_agent(
        "a1", {"template_config": {"response_prefix": "!"}}, None, CTX
    )
    assert state.version == 3
    assert len(warnings) == 1
    # Switching template re-validates the existing config against the new schema.
    with pytest.raises(InvalidAgent) as info:
        app.update_agent("a1", {"template_id": "langgraph-workflow"}, None, CTX)
    assert fields(info.value) == {"spec.template_config"}
    state, _ = app.update_agent("a1", dict(WORKFLOW_SPEC), None, CTX)
    assert (state.spec["template_id"], state.version) == ("langgraph-workflow", 4)


def test_agents_of_a_withdrawn_template_can_still_be_edited(app: AgentRegistry) -> None:
    create(app, "a1")
    app.catalog = InMemoryTemplateCatalog([WORKFLOW])  # simple-test is gone
    assert app.update_agent("a1", {"description": "still fine"}, None, CTX)[0].version == 2
    with pytest.raises(InvalidAgent) as info:
        app.update_agent("a1", {"template_config": {}}, None, CTX)
    assert fields(info.value) == {"spec.template_id"}


def test_update_refuses_bad_values_and_oversized_results(app: AgentRegistry) -> None:
    create(app, "a1")
    with pytest.raises(InvalidAgent) as info:
        app.update_agent("a1", {"colour": "red", "toolsets": ["a", "a"]}, None, CTX)
    assert fields(info.value) == {"spec.colour", "spec.toolsets[1]"}
    with pytest.raises(InvalidAgent) as info:
        app.update_agent("a1", {"metadata": {"blob": "x" * MAX_SPEC_BYTES}}, None, CTX)
    assert fields(info.value) == {"spec"}
    with pytest.raises(InvalidArgument) as err:
        app.update_agent("", {"description": "x"}, None, CTX)
    assert fields(err.value) == {"agent_id"}
    assert app.get_agent("a1").version == 1


def test_commands_on_an_unknown_agent_say_not_found(app: AgentRegistry) -> None:
    for command in (
        lambda: app.update_agent("ghost", {"description": "x"}, None, CTX),
        lambda: app.set_status("ghost", Status.ACTIVE, "", None, CTX),
        lambda: app.delete_agent("ghost", None, CTX),
        lambda: app.get_agent("ghost"),
    ):
        with pytest.raises(AgentNotFound) as info:
            command()
        assert info.value.metadata == {"agent_id": "ghost"}


def test_template_id_and_version_must_exist_in_the_catalogue(app: AgentRegistry) -> None:
    with pytest.raises(InvalidAgent) as info:
        app.create_agent("a1", spec(template_version_id="9.9.9"), None, CTX)
    assert [(v.field, v.description) for v in info.value.violations] == [
        ("spec.template_version_id", "template 'simple-test' has no version '9.9.9'")
    ]
    with pytest.raises(InvalidAgent) as info:
        app.create_agent("a1", spec(template_id="nope", template_version_id="1.0.0"), None, CTX)
    assert [(v.field, v.description) for v in info.value.violations] == [
        ("spec.template_id", "unknown template 'nope'")
    ]


# ------------------------------------------------------------------ status and delete


def test_set_status_moves_along_the_lifecycle(app: AgentRegistry) -> None:
    create(app, "a1")
    assert app.set_status("a1", Status.ACTIVE, "go", 1, CTX).version == 2
    assert app.set_status("a1", Status.ACTIVE, "again", None, CTX).version == 2  # no-op
    with pytest.raises(IllegalStatusTransition):
        app.set_status("a1", Status.CREATED, "", None, CTX)
    with pytest.raises(VersionMismatch):
        app.set_status("a1", Status.INACTIVE, "", 1, CTX)
    with pytest.raises(InvalidArgument) as info:
        app.set_status("a1", Status.INACTIVE, "x" * 1001, None, CTX)
    assert fields(info.value) == {"reason"}
    entries, _ = app.list_events("a1")
    assert [(e.type, e.from_status, e.to_status, e.reason) for e in entries] == [
        ("registered", "", "created", ""),
        ("status_changed", "created", "active", "go"),
    ]


def test_delete_frees_the_name_and_keeps_history(app: AgentRegistry) -> None:
    create(app, "a1", name="Gone")
    app.set_status("a1", Status.ACTIVE, "", None, CTX)
    assert app.delete_agent("a1", 2, CTX) == 3
    assert name_holder(app, "gone") == (None, 2)
    for command in (
        lambda: app.get_agent("a1"),
        lambda: app.update_agent("a1", {"description": "x"}, None, CTX),
        lambda: app.set_status("a1", Status.INACTIVE, "", None, CTX),
        lambda: app.delete_agent("a1", None, CTX),
    ):
        with pytest.raises(AgentNotFound):
            command()
    assert history(app, "a1") == ["registered", "status_changed", "deleted"]
    assert app.get_agent("a1", version=2).status == "active"
    create(app, "a2", name="GONE")
    assert name_holder(app, "gone") == ("a2", 3)


def test_recreating_a_deleted_id_continues_its_versions(app: AgentRegistry) -> None:
    create(app, "a1", name="First")
    app.delete_agent("a1", None, CTX)
    state, _ = app.create_agent("a1", spec(name="Second"), Status.ACTIVE, CTX)
    assert (state.version, state.status, state.spec["name"]) == (3, "active", "Second")
    assert state.spec["description"] == ""
    assert history(app, "a1") == ["registered", "deleted", "reregistered"]
    assert name_holder(app, "first") == (None, 2)
    assert create(app, "a2", name="First") == 1


def test_get_agent_at_every_version_of_a_deleted_and_recreated_agent(app: AgentRegistry) -> None:
    create(app, "a1", name="First")
    app.update_agent("a1", {"description": "two"}, None, CTX)
    app.delete_agent("a1", None, CTX)
    app.create_agent("a1", spec(name="Second"), None, CTX)
    assert app.get_agent("a1", version=1).spec["name"] == "First"
    assert app.get_agent("a1", version=2).spec["description"] == "two"
    with pytest.raises(AgentNotFound) as info:
        app.get_agent("a1", version=3)  # the deletion itself
    assert "at version 3" in info.value.message
    assert app.get_agent("a1", version=4).spec == app.get_agent("a1").spec
    assert app.get_agent("a1", version=0).version == 4  # 0 means latest
    with pytest.raises(AgentNotFound):
        app.get_agent("a1", version=5)
    with pytest.raises(InvalidArgument):
        app.get_agent("a1", version=-1)
    with pytest.raises(InvalidArgument):
        app.get_agent("")


def test_snapshots_are_taken_and_versions_between_them_read_right(app: AgentRegistry) -> None:
    create(app, "a1")
    for i in range(2, 14):
        app.update_agent("a1", {"description": f"at {i}"}, None, CTX)
    assert app.snapshots is not None
    snapshots = list(app.snapshots.get(agent_uuid("a1")))
    assert [s.originator_version for s in snapshots] == [5, 10]
    created = app.get_agent("a1", version=1).created_at
    for version in (1, 4, 5, 6, 7, 10, 11, 13):
        state = app.get_agent("a1", version=version)
        assert state.version == version
        assert state.spec["description"] == ("" if version == 1 else f"at {version}")
        assert state.created_at == created
    assert app.get_agent("a1").spec["description"] == "at 13"


# ------------------------------------------------------------------ history


def test_list_events_pages_through_history(app: AgentRegistry) -> None:
    create(app, "a1")
    for i in range(6):
        app.update_agent("a1", {"description": f"d{i}"}, None, CTX)
    versions, token, pages = [], "", 0
    while True:
        entries, token = app.list_events("a1", 3, token)
        versions += [e.version for e in entries]
        pages += 1
        if not token:
            break
    assert (versions, pages) == ([1, 2, 3, 4, 5, 6, 7], 3)
    entries, token = app.list_events("a1", 0)  # default page
    assert (len(entries), token) == (7, "")
    assert app.list_events("a1", 7) == (entries, "")


def test_list_events_refuses_tokens_it_did_not_issue(app: AgentRegistry) -> None:
    create(app, "a1")
    for token in ("garbage!", encode_token("x3"), encode_token("v"), encode_token("v-1"), "gA"):
        with pytest.raises(InvalidArgument) as info:
            app.list_events("a1", 2, token)
        assert fields(info.value) == {"page_token"}, token
    assert app.list_events("a1", 2, encode_token("v99")) == ([], "")
    with pytest.raises(InvalidArgument):
        app.list_events("a1", -1)
    with pytest.raises(InvalidArgument):
        app.list_events("")
    with pytest.raises(AgentNotFound):
        app.list_events("nobody")


# ------------------------------------------------------------------ collisions


class CollidingRegistry(AgentRegistry):
    """Test double of a contended store: the next `collisions` saves are refused."""

    collisions = 0

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        if self.collisions:
            self.collisions -= 1
            raise IntegrityError("simulated: another writer saved first")
        return super().save(*objs, **kwargs)


@pytest.fixture
def colliding(catalog: InMemoryTemplateCatalog) -> CollidingRegistry:
    return CollidingRegistry(
        {"PERSISTENCE_MODULE": "eventsourcing.popo"}, catalog, snapshot_interval=5, max_attempts=4
    )


def test_a_command_is_retried_after_a_collision(colliding: CollidingRegistry) -> None:
    colliding.collisions = 3
    assert create(colliding, "a1", name="One") == 1
    assert colliding.collisions == 0  # every refusal was absorbed by a retry
    assert history(colliding, "a1") == ["registered"]
    assert name_holder(colliding, "one") == ("a1", 1)
    colliding.collisions = 2
    state, _ = colliding.update_agent("a1", {"description": "x"}, 1, CTX)
    assert state.version == 2  # the agent had not moved: re-run, not a mismatch
    colliding.collisions = 2
    assert colliding.set_status("a1", Status.ACTIVE, "", 2, CTX).version == 3
    assert history(colliding, "a1") == ["registered", "configuration_changed", "status_changed"]


def test_endless_collisions_give_up_with_concurrent_modification(
    colliding: CollidingRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    create(colliding, "a1", name="One")
    colliding.collisions = 1_000  # a store that never lets this writer through
    commands = [
        lambda: colliding.set_status("a1", Status.ACTIVE, "", None, CTX),
        lambda: colliding.update_agent("a1", {"name": "Uno"}, 1, CTX),
        lambda: colliding.delete_agent("a1", None, CTX),
        lambda: create(colliding, "a2", name="Other"),
    ]
    with caplog.at_level(logging.WARNING):
        for command in commands:
            with pytest.raises(ConcurrentModification) as info:
                command()
            assert info.value.reason == "CONCURRENT_MODIFICATION"
    assert colliding.collisions > 900  # gave up after a few attempts, did not spin
    assert "gave up after repeated write collisions" in caplog.text
    colliding.collisions = 0
    assert colliding.get_agent("a1").version == 1
    assert history(colliding, "a1") == ["registered"]
    with pytest.raises(AgentNotFound):
        colliding.get_agent("a2")
    assert create(colliding, "a3", name="Other") == 1  # nothing was half-written
    assert name_holder(colliding, "one") == ("a1", 1)


@pytest.fixture(params=["uncached", "cached"])
def shared_app(request: pytest.FixtureRequest, catalog: InMemoryTemplateCatalog) -> AgentRegistry:
    """The registry with and without the aggregate cache (on in production)."""
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if request.param == "cached":
        env["AGGREGATE_CACHE_MAXSIZE"] = "100"
    return AgentRegistry(env, catalog, snapshot_interval=5)


def test_concurrent_updates_lose_nothing(shared_app: AgentRegistry, interleaving: None) -> None:
    app = shared_app
    create(app, "a1")
    results = all_at_once(
        THREADS, lambda i: app.update_agent("a1", {"description": f"writer {i}"}, None, CTX)
    )
    assert all(not isinstance(r, Exception) for r in results), results
    versions = sorted(r[0].version for r in results)  # type: ignore[index]
    assert versions == list(range(2, THREADS + 2))
    entries, _ = app.list_events("a1")
    recorded = [e.changes["description"] for e in entries[1:]]
    assert [e.version for e in entries] == list(range(1, THREADS + 2))
    assert sorted(recorded) == sorted(f"writer {i}" for i in range(THREADS))
    assert app.get_agent("a1").spec["description"] == recorded[-1]


def test_concurrent_renames_leave_exactly_the_final_name_claimed(
    shared_app: AgentRegistry, interleaving: None
) -> None:
    app = shared_app
    create(app, "a1", name="start")
    results = all_at_once(
        THREADS, lambda i: app.update_agent("a1", {"name": f"name {i}"}, None, CTX)
    )
    assert all(not isinstance(r, Exception) for r in results), results
    final = app.get_agent("a1")
    assert final.version == THREADS + 1
    holders = {
        n: name_holder_or_none(app, n) for n in ["start"] + [f"name {i}" for i in range(THREADS)]
    }
    assert [n for n, h in holders.items() if h == "a1"] == [final.spec["name"]]
    free = [n for n in holders if n != final.spec["name"]]
    assert create(app, "a2", name=free[0]) == 1  # every other name is free again


def test_concurrent_updates_pinned_to_one_version_let_exactly_one_win(
    app: AgentRegistry, interleaving: None
) -> None:
    create(app, "a1")
    results = all_at_once(
        THREADS, lambda i: app.update_agent("a1", {"description": f"writer {i}"}, 1, CTX)
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1
    assert len(losers) == THREADS - 1
    assert all(isinstance(e, VersionMismatch) for e in losers), losers
    assert app.get_agent("a1").version == 2
    assert history(app, "a1") == ["registered", "configuration_changed"]


def test_concurrent_creates_with_one_name_let_exactly_one_win(
    app: AgentRegistry, interleaving: None
) -> None:
    spellings = ["Same Name", "SAME NAME", " same name "]
    results = all_at_once(THREADS, lambda i: create(app, f"a{i}", name=spellings[i % 3]))
    assert sum(r == 1 for r in results) == 1
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(losers) == THREADS - 1
    assert all(isinstance(e, NameTaken) for e in losers), losers
    holder, _ = name_holder(app, "same name")
    assert holder is not None
    assert app.get_agent(holder).spec["name"] in {"Same Name", "SAME NAME", "same name"}


def test_concurrent_creates_of_one_id_let_exactly_one_win(
    app: AgentRegistry, interleaving: None
) -> None:
    results = all_at_once(THREADS, lambda i: create(app, "a1", name=f"name {i}"))
    assert sum(r == 1 for r in results) == 1
    assert all(isinstance(r, AgentAlreadyExists) for r in results if r != 1), results
    name = app.get_agent("a1").spec["name"]
    live = [i for i in range(THREADS) if name_holder_or_none(app, f"name {i}") == "a1"]
    assert [f"name {i}" for i in live] == [name]  # losers left no claimed names


def name_holder_or_none(app: AgentRegistry, name: str) -> str | None:
    try:
        return name_holder(app, name)[0]
    except AggregateNotFoundError:
        return None


# ------------------------------------------------------------------ listing


def test_catch_up_in_small_batches_reaches_the_head(
    app: AgentRegistry, listing: AgentListing
) -> None:
    for i in range(10):
        create(app, f"a{i}", name=f"agent {i}")
        app.update_agent(f"a{i}", {"description": "d"}, None, CTX)
    head = listing.head()
    assert head == 30  # agent + name index per create, one per update
    partial = listing.catch_up(upto=4)
    assert 4 <= partial < head
    assert listing.store.position() == partial
    assert listing.catch_up() == head
    assert listing.store.position() == head
    states, token = listing.list(ListFilter(), allow_stale=True)
    assert ids(states) == [f"a{i}" for i in range(10)]
    assert {s.version for s in states} == {2}
    assert token == ""
    assert listing.catch_up() == head  # nothing new: stays


def test_list_reads_its_own_writes(app: AgentRegistry, listing: AgentListing) -> None:
    assert listing.list(ListFilter()) == ([], "")
    for i in range(5):
        create(app, f"a{i}", name=f"agent {i}")
        assert f"a{i}" in ids(listing.list(ListFilter())[0])
        app.set_status(f"a{i}", Status.ACTIVE, "", None, CTX)
        active, _ = listing.list(ListFilter(status="active"))
        assert ids(active) == [f"a{j}" for j in range(i + 1)]
        assert active[-1].version == 2


def test_stale_list_skips_catching_up(app: AgentRegistry, listing: AgentListing) -> None:
    create(app, "a1")
    assert listing.list(ListFilter(), allow_stale=True) == ([], "")
    assert ids(listing.list(ListFilter())[0]) == ["a1"]


def test_list_filters(app: AgentRegistry, listing: AgentListing) -> None:
    create(app, "a0", name="zero", owner_id="o1")
    create(app, "a1", name="one", owner_id="o2")
    app.create_agent("w2", {"name": "two", "owner_id": "o1", **WORKFLOW_SPEC}, Status.ACTIVE, CTX)
    app.create_agent("w3", {"name": "three", "owner_id": "o2", **WORKFLOW_SPEC}, None, CTX)

    def listed(**where: str) -> list[str]:
        return ids(listing.list(ListFilter(**where))[0])

    assert listed() == ["a0", "a1", "w2", "w3"]
    assert listed(owner_id="o1") == ["a0", "w2"]
    assert listed(template_id="langgraph-workflow") == ["w2", "w3"]
    assert listed(status="active") == ["w2"]
    assert listed(template_id="langgraph-workflow", owner_id="o2") == ["w3"]
    assert listed(template_id="simple-test", status="active") == []
    assert listed(owner_id="nobody") == []
    app.update_agent("a1", {"owner_id": "o1"}, None, CTX)
    assert listed(owner_id="o1") == ["a0", "a1", "w2"]


def test_list_pages_with_tokens_bound_to_their_filters(
    app: AgentRegistry, listing: AgentListing
) -> None:
    for i in range(7):
        create(app, f"a{i}", name=f"agent {i}", owner_id="o")
    seen, token, pages = [], "", 0
    while True:
        page, token = listing.list(ListFilter(owner_id="o"), 3, token)
        seen += ids(page)
        pages += 1
        if not token:
            break
    assert (seen, pages) == ([f"a{i}" for i in range(7)], 3)
    _, first_token = listing.list(ListFilter(), 3)
    with pytest.raises(InvalidArgument) as info:
        listing.list(ListFilter(owner_id="o"), 3, first_token)
    assert fields(info.value) == {"page_token"}
    assert "other filters" in info.value.violations[0].description
    for bad in (
        "garbage!",
        encode_token("not json"),
        encode_token('{"after": 1}'),
        encode_token("[]"),
    ):
        with pytest.raises(InvalidArgument) as info:
            listing.list(ListFilter(), 3, bad)
        assert fields(info.value) == {"page_token"}, bad
    with pytest.raises(InvalidArgument):
        listing.list(ListFilter(), -1)


def test_deleted_agents_leave_the_list_and_return_at_the_end_when_recreated(
    app: AgentRegistry, listing: AgentListing
) -> None:
    for i in range(3):
        create(app, f"a{i}", name=f"agent {i}")
    app.delete_agent("a0", None, CTX)
    assert ids(listing.list(ListFilter())[0]) == ["a1", "a2"]
    app.create_agent("a0", spec(name="agent 0 again"), Status.ACTIVE, CTX)
    states, _ = listing.list(ListFilter())
    assert ids(states) == ["a1", "a2", "a0"]
    assert (states[-1].version, states[-1].spec["name"], states[-1].status) == (
        3,
        "agent 0 again",
        "active",
    )
    records = listing.store.load(["a0", "a1", "a2"])
    assert records["a0"].seq > records["a2"].seq > records["a1"].seq


class RecordingReadModel(InMemoryReadModel):
    """The in-memory read model, noting the position range of every applied batch."""

    def __init__(self, app_name: str) -> None:
        super().__init__(app_name)
        self.applied: list[tuple[int, int]] = []
        self.refused = 0
        self._saves = threading.Lock()

    def save(self, records: Sequence[AgentRecord], position: int) -> bool:
        with self._saves:
            before = self.position()
            if super().save(records, position):
                self.applied.append((before, position))
                return True
            self.refused += 1
            return False


def rows(store: InMemoryReadModel) -> dict[str, dict[str, Any]]:
    return {
        agent_id: record.to_document()
        for agent_id, record in store.load([f"a{i}" for i in range(40)]).items()
    }


def test_two_replicas_sharing_a_store_apply_each_batch_once(
    app: AgentRegistry, interleaving: None
) -> None:
    shared = RecordingReadModel(app.name)
    replicas = [AgentListing(app, shared, batch_size=3), AgentListing(app, shared, batch_size=3)]
    for round_ in range(4):
        for i in range(10 * round_, 10 * round_ + 10):
            create(app, f"a{i}", name=f"agent {i}")
            if i % 3 == 0:
                app.set_status(f"a{i}", Status.ACTIVE, "", None, CTX)
            if i % 4 == 0:
                app.delete_agent(f"a{i}", None, CTX)
        reached = all_at_once(4, lambda i: replicas[i % 2].catch_up())
        assert reached == [app.recorder.max_notification_id()] * 4
    head = app.recorder.max_notification_id()
    # The applied batches tile the log exactly: nothing skipped, nothing applied twice.
    assert shared.applied[0][0] == 0
    assert shared.applied[-1][1] == head
    assert all(a[1] == b[0] for a, b in zip(shared.applied, shared.applied[1:], strict=False))
    single = InMemoryReadModel(app.name)
    AgentListing(app, single, batch_size=3).catch_up()
    assert rows(shared) == rows(single)
    assert len(rows(single)) == 40


async def test_follow_catches_up_when_woken_and_stops_on_stop(
    app: AgentRegistry, listing: AgentListing, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    fail_next: list[Exception | None] = [None]

    async def catch_up() -> int:
        calls.append(1)
        if (error := fail_next[0]) is not None:
            fail_next[0] = None
            raise error
        return await asyncio.to_thread(listing.catch_up)

    wake, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(follow(catch_up, wake, stop, interval=30))

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")

    await until(lambda: len(calls) == 1)
    await asyncio.to_thread(create, app, "a1")
    wake.set()
    await until(lambda: len(calls) == 2 and listing.store.position() == listing.head())
    fail_next[0] = RuntimeError("a bug")
    wake.set()
    await until(lambda: len(calls) == 3)
    await until(lambda: "projection catch-up failed" in caplog.text)
    fail_next[0] = Unavailable("database unavailable")  # a warning, not a traceback
    wake.set()
    await until(lambda: len(calls) == 4)
    await until(lambda: "projection catch-up paused" in caplog.text)
    await asyncio.to_thread(app.set_status, "a1", Status.ACTIVE, "", None, CTX)
    wake.set()  # a failure does not stop the follower
    await until(lambda: listing.store.position() == listing.head())
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(calls) == 5


# ------------------------------------------------------------------ relay


@pytest.fixture
def runner() -> Iterator[BlockingRunner]:
    pool = BlockingRunner(2, "relay-test")
    try:
        yield pool
    finally:
        pool.shutdown()


def make_relay(
    app: AgentRegistry,
    publisher: InMemoryPublisher,
    positions: InMemoryReadModel,
    runner: BlockingRunner,
    **kwargs: Any,
) -> Relay:
    # Record the position after every batch unless a test says otherwise.
    kwargs.setdefault("track_interval", 0.0)
    return Relay(app, publisher, positions, runner, **kwargs)


def agent_positions(app: AgentRegistry) -> list[int]:
    """Notification ids of the agent events (not the name index's)."""
    return [
        n.id
        for n in app.recorder.select_notifications(start=1, limit=10_000)
        if isinstance(app.mapper.to_domain_event(n), Agent.Event)
    ]


def build_history(app: AgentRegistry) -> None:
    create(app, "a1", name="One")
    create(app, "a2", name="Two")
    app.update_agent("a1", {"name": "Uno"}, None, CTX)
    app.set_status("a2", Status.ACTIVE, "go", None, CTX)
    app.delete_agent("a2", None, CTX)


async def test_relay_publishes_every_agent_event_once_in_order(
    app: AgentRegistry, runner: BlockingRunner
) -> None:
    build_history(app)
    publisher, positions = InMemoryPublisher(), InMemoryReadModel(app.name)
    relay = make_relay(app, publisher, positions, runner, batch_size=4)
    covered = 0
    while moved := await relay.publish_pending():
        covered += moved
    head = app.recorder.max_notification_id()
    assert covered == head
    expected = agent_positions(app)
    assert len(expected) == 5 < head  # name index events are not published
    assert [e.position for e in publisher.events] == expected
    assert [e.event_id for e in publisher.events] == [f"AgentRegistry:{p}" for p in expected]
    assert [(e.entry.agent_id, e.entry.type) for e in publisher.events] == [
        ("a1", "registered"),
        ("a2", "registered"),
        ("a1", "configuration_changed"),
        ("a2", "status_changed"),
        ("a2", "deleted"),
    ]
    assert positions.get_position("AgentRegistry.relay") == head  # past the index events
    assert await relay.publish_pending() == 0


async def test_relay_moves_past_batches_holding_only_name_index_events(
    app: AgentRegistry, runner: BlockingRunner
) -> None:
    create(app, "a1", name="One")  # 1: registered, 2: name claimed
    publisher, positions = InMemoryPublisher(), InMemoryReadModel(app.name)
    relay = make_relay(app, publisher, positions, runner, batch_size=1)
    assert await relay.publish_pending() == 1
    assert [e.position for e in publisher.events] == [1]
    assert await relay.publish_pending() == 1  # the claim: nothing to publish, still tracked
    assert [e.position for e in publisher.events] == [1]
    assert positions.get_position("AgentRegistry.relay") == 2
    assert await relay.publish_pending() == 0


async def test_relay_records_its_position_lazily_while_busy_and_on_stop(
    app: AgentRegistry, runner: BlockingRunner
) -> None:
    create(app, "a1", name="One")
    publisher, positions = InMemoryPublisher(), InMemoryReadModel(app.name)
    relay = make_relay(app, publisher, positions, runner, track_interval=3600.0)
    await relay.resync()
    await relay.record_position()  # starts the interval
    assert await relay.publish_pending() == 2
    assert [e.position for e in publisher.events] == [1]
    assert positions.get_position("AgentRegistry.relay") == 0  # not yet recorded
    stop = asyncio.Event()
    stop.set()
    await relay.run(stop)  # stopping records where it got
    assert positions.get_position("AgentRegistry.relay") == 2
    # A restart with a lagging record still resumes after what the bus holds.
    positions_behind = InMemoryReadModel(app.name)
    restarted = make_relay(app, publisher, positions_behind, runner)
    assert await restarted.resync() == 1
    assert await restarted.publish_pending() == 1  # only the name claim is left
    assert [e.position for e in publisher.events] == [1]


async def test_relay_resumes_after_its_tracked_position(
    app: AgentRegistry, runner: BlockingRunner
) -> None:
    positions = InMemoryReadModel(app.name)
    create(app, "a1", name="One")
    first = InMemoryPublisher()
    await make_relay(app, first, positions, runner).publish_pending()
    create(app, "a2", name="Two")
    app.set_status("a1", Status.ACTIVE, "", None, CTX)
    second = InMemoryPublisher()  # an empty bus: only the tracked position says where to resume
    restarted = make_relay(app, second, positions, runner)
    assert await restarted.resync() == positions.get_position("AgentRegistry.relay")
    await restarted.publish_pending()
    assert [(e.entry.agent_id, e.entry.type) for e in first.events] == [("a1", "registered")]
    assert [(e.entry.agent_id, e.entry.type) for e in second.events] == [
        ("a2", "registered"),
        ("a1", "status_changed"),
    ]


async def test_relay_resumes_after_what_the_bus_already_holds(
    app: AgentRegistry, runner: BlockingRunner
) -> None:
    build_history(app)
    everything = InMemoryPublisher()
    await make_relay(app, everything, InMemoryReadModel(app.name), runner).publish_pending()
    held = everything.events[:3]

    class SpyPublisher(InMemoryPublisher):
        """The in-memory bus, noting every event id it is asked to publish."""

        def __init__(self) -> None:
            super().__init__()
            self.sent: list[str] = []

        async def publish(self, events: Sequence[Any]) -> None:
            self.sent += [e.event_id for e in events]
            await super().publish(events)

    bus = SpyPublisher()
    await bus.publish(held)  # the bus holds 3 events; the relay's tracking lost them
    bus.sent.clear()
    relay = make_relay(app, bus, InMemoryReadModel(app.name), runner)
    assert await relay.resync() == held[-1].position
    await relay.publish_pending()
    assert bus.sent == [e.event_id for e in everything.events[3:]]
    assert [e.event_id for e in bus.events] == [e.event_id for e in everything.events]


async def test_relay_keeps_retrying_while_the_bus_is_down(
    app: AgentRegistry, runner: BlockingRunner, caplog: pytest.LogCaptureFixture
) -> None:
    build_history(app)
    publisher, positions = InMemoryPublisher(), InMemoryReadModel(app.name)
    publisher.available = False
    relay = make_relay(app, publisher, positions, runner, poll_interval=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.35)  # several failed rounds
    assert publisher.events == []
    assert positions.get_position("AgentRegistry.relay") == 0
    assert caplog.text.count("relay paused") >= 2
    publisher.available = True
    relay.wake.set()
    for _ in range(500):
        if len(publisher.events) == 5:
            break
        await asyncio.sleep(0.01)
    # New writes are picked up by polling while it runs.
    await asyncio.to_thread(create, app, "a3", name="Three")
    for _ in range(500):
        if len(publisher.events) == 6:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert [e.position for e in publisher.events] == agent_positions(app)
    assert positions.get_position("AgentRegistry.relay") == app.recorder.max_notification_id()


# -------------------------------------------- checks against what the executors publish

FLOW_STEPS = [{"name": "a"}, {"name": "b", "depends_on": ["a"]}, {"name": "c", "depends_on": ["b"]}]


def flow_spec(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": "Flow",
        "template_id": "flow",
        "template_version_id": "1.0.0",
        "template_config": {"steps": FLOW_STEPS},
    }
    return {**values, **overrides}


def refusal(command: Callable[[], object]) -> dict[str, str]:
    with pytest.raises(InvalidAgent) as info:
        command()
    return {v.field: v.description for v in info.value.violations}


@pytest.fixture
def published(catalog: InMemoryTemplateCatalog) -> InMemoryTemplateCatalog:
    """The catalogue after one executor (providers offline and gpt) has published."""
    catalog.put_executor(executor_report(run_timeout_seconds=300, max_steps=10))
    return catalog


CYCLIC = [{"name": "a", "depends_on": ["c"]}, *FLOW_STEPS[1:]]
PROBLEMS: list[tuple[dict[str, Any], str, str]] = [
    (
        {"template_config": {"steps": CYCLIC}},
        "spec.template_config.steps[1].depends_on[0]",
        "steps depend on each other in a cycle: a -> c -> b -> a",
    ),
    (
        {"template_config": {"steps": [*FLOW_STEPS, {"name": "d", "depends_on": ["x"]}]}},
        "spec.template_config.steps[3].depends_on[0]",
        "'x' names no step (step ids: a, b, c, d)",
    ),
    (
        {"template_config": {"steps": FLOW_STEPS, "step_timeout": 900}},
        "spec.template_config.step_timeout",
        "is 900, above the executors' run_timeout_seconds ceiling of 300",
    ),
    (
        {"template_config": {"steps": [{"name": f"s{i}"} for i in range(8)]}},
        "spec.template_config.steps",
        "has 8 items; at most 7 fit the executors' max_steps ceiling of 10",
    ),
    (
        {"llm_config_id": "claude"},
        "spec.llm_config_id",
        "names no model provider the executors serve: 'claude' (known provider ids: gpt, offline",
    ),
]


@pytest.mark.parametrize(("change", "field", "why"), PROBLEMS)
def test_create_refuses_what_would_only_fail_at_run_time(
    app: AgentRegistry,
    published: InMemoryTemplateCatalog,
    change: dict[str, Any],
    field: str,
    why: str,
) -> None:
    got = refusal(lambda: app.create_agent("f1", flow_spec(**change), None, CTX))
    assert list(got) == [field]
    assert got[field].startswith(why)
    with pytest.raises(AgentNotFound):
        app.get_agent("f1")


@pytest.mark.parametrize(("change", "field", "why"), PROBLEMS)
def test_update_refuses_what_would_only_fail_at_run_time(
    app: AgentRegistry,
    published: InMemoryTemplateCatalog,
    change: dict[str, Any],
    field: str,
    why: str,
) -> None:
    app.create_agent("f1", flow_spec(), None, CTX)
    got = refusal(lambda: app.update_agent("f1", change, None, CTX))
    assert list(got) == [field]
    assert got[field].startswith(why)
    assert app.get_agent("f1").version == 1


def test_agents_within_the_executors_reach_are_accepted(
    app: AgentRegistry, published: InMemoryTemplateCatalog
) -> None:
    config = {"steps": FLOW_STEPS, "step_timeout": 300}
    _, warnings = app.create_agent(
        "f1", flow_spec(llm_config_id="gpt", template_config=config), None, CTX
    )
    assert warnings == []
    state, warnings = app.update_agent("f1", {"llm_config_id": ""}, None, CTX)
    assert (state.version, warnings) == (2, [])


def test_an_update_leaving_the_provider_alone_is_not_held_to_it(
    app: AgentRegistry, catalog: InMemoryTemplateCatalog
) -> None:
    catalog.put_executor(executor_report(providers=("offline", "gpt")))
    app.create_agent("f1", flow_spec(llm_config_id="gpt"), None, CTX)
    # The deployment dropped "gpt": renaming the agent must still work.
    catalog.put_executor(executor_report(providers=("offline",)))
    state, _ = app.update_agent("f1", {"name": "Renamed"}, None, CTX)
    assert state.spec["name"] == "Renamed"
    got = refusal(lambda: app.update_agent("f1", {"llm_config_id": "gpt"}, None, CTX))
    assert "known provider ids: offline" in got["spec.llm_config_id"]


def test_before_any_executor_published_provider_and_ceilings_are_unchecked_with_warnings(
    app: AgentRegistry,
) -> None:
    config = {"steps": FLOW_STEPS, "step_timeout": 100_000}
    _, warnings = app.create_agent(
        "f1", flow_spec(llm_config_id="claude", template_config=config), None, CTX
    )
    assert warnings == [
        "llm_config_id 'claude' was not checked: no executor has published its model providers yet",
        "the limits in template_config were not checked against the executors' ceilings: "
        "no executor has published them yet",
    ]
    # A cycle needs no executor to be found.
    got = refusal(lambda: app.update_agent("f1", {"template_config": {"steps": CYCLIC}}, None, CTX))
    assert list(got) == ["spec.template_config.steps[1].depends_on[0]"]


def test_the_lowest_ceiling_and_the_shared_providers_of_live_executors_apply(
    app: AgentRegistry, catalog: InMemoryTemplateCatalog
) -> None:
    catalog.put_executor(executor_report("e1", ("offline", "gpt"), run_timeout_seconds=600))
    catalog.put_executor(executor_report("e2", ("offline",), run_timeout_seconds=120))
    catalog.put_executor(
        executor_report("gone", ("offline",), expires_in=-60, run_timeout_seconds=10)
    )
    config = {"steps": FLOW_STEPS, "step_timeout": 121}
    got = refusal(
        lambda: app.create_agent(
            "f1", flow_spec(llm_config_id="gpt", template_config=config), None, CTX
        )
    )
    assert got == {
        "spec.llm_config_id": "names no model provider the executors serve: 'gpt' "
        "(known provider ids: offline; leave it empty for the default)",
        "spec.template_config.step_timeout": "is 121, above the executors' "
        "run_timeout_seconds ceiling of 120",
    }
    config["step_timeout"] = 120  # the expired executor's 10 s no longer counts
    app.create_agent("f1", flow_spec(template_config=config), None, CTX)
