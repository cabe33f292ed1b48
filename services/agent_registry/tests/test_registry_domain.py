"""Domain rules with no I/O: status lifecycle, spec validation, templates, the aggregates."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from registry_support import CTX, FLOW, SIMPLE, TASKS, WORKFLOW, executor_report

from agent_registry.domain.agent import (
    Agent,
    AgentName,
    CommandContext,
    agent_uuid,
    describe,
    name_uuid,
)
from agent_registry.domain.executors import (
    UNKNOWN,
    ExecutorFleet,
    ExecutorReport,
    check_llm_config_id,
    fleet_of,
)
from agent_registry.domain.spec import (
    MAX_DEPTH,
    MAX_SPEC_BYTES,
    MAX_TOOLSETS,
    SPEC_FIELDS,
    complete,
    name_key,
    validate_agent_id,
    validate_fields,
    validate_size,
)
from agent_registry.domain.status import TRANSITIONS, Status, can_transition
from agent_registry.domain.templates import MAX_VIOLATIONS, TemplateDescriptor, json_path
from agent_registry.errors import AgentAlreadyExists, AgentNotFound, IllegalStatusTransition

OTHER = CommandContext(actor="bob", request_id="req-2")

ALLOWED = {
    ("created", "active"),
    ("created", "error"),
    ("active", "inactive"),
    ("active", "error"),
    ("inactive", "active"),
    ("inactive", "error"),
    ("error", "active"),
    ("error", "inactive"),
}
MOVES = [(a, b) for a, b in itertools.product([s.value for s in Status], repeat=2) if a != b]


def violations(spec: dict[str, Any]) -> dict[str, str]:
    """{path: description} for every violation of `spec`'s fields."""
    return {v.field: v.description for v in validate_fields(spec, spec)}


def paths(spec: dict[str, Any]) -> set[str]:
    return set(violations(spec))


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep."""
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def agent_at(status: str) -> Agent:
    """A registered agent already in `status`, with no pending events."""
    agent = Agent.register("a1", {"name": "Bot", "template_id": "t"}, Status(status), CTX)
    agent.collect_events()
    return agent


# ------------------------------------------------------------------ status lifecycle


def test_transition_table_is_exactly_the_documented_lifecycle() -> None:
    table = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    for a, b in MOVES:
        assert can_transition(Status(a), Status(b)) == ((a, b) in ALLOWED)


@pytest.mark.parametrize(("current", "requested"), MOVES)
def test_change_status_applies_allowed_moves_and_refuses_the_rest(
    current: str, requested: str
) -> None:
    agent = agent_at(current)
    if (current, requested) in ALLOWED:
        assert agent.change_status(Status(requested), "why", OTHER) is True
        (event,) = agent.collect_events()
        assert isinstance(event, Agent.StatusChanged)
        assert (event.from_status, event.to_status, event.reason) == (current, requested, "why")
        assert (agent.status, agent.version, agent.updated_by) == (requested, 2, "bob")
    else:
        with pytest.raises(IllegalStatusTransition) as info:
            agent.change_status(Status(requested), "why", OTHER)
        assert info.value.metadata == {"agent_id": "a1", "from": current, "to": requested}
        assert (agent.status, agent.version) == (current, 1)
        assert agent.collect_events() == []


@pytest.mark.parametrize("status", [s.value for s in Status])
def test_setting_the_current_status_is_a_no_op(status: str) -> None:
    agent = agent_at(status)
    assert agent.change_status(Status(status), "again", OTHER) is False
    assert agent.collect_events() == []
    assert agent.version == 1


# ------------------------------------------------------------------ spec: text fields


def test_a_complete_valid_spec_has_no_violations() -> None:
    spec = {
        "name": "Support bot",
        "description": "multi\nline\tdescription",
        "avatar_url": "https://example.com/a.png",
        "type": "assistant",
        "template_id": "simple.test_v-1",
        "template_version_id": "1.0.0",
        "system_prompt": "Be kind.\r\nAlways.",
        "llm_config_id": "offline",
        "agent_line_id": "line-1",
        "version_type": "major",
        "version_number": "1.2",
        "owner_id": "team-a",
        "template_config": {"steps": [{"name": "s"}]},
        "conversation_config": {"temperature": 0.7, "max_tokens": 100, "historyLength": 0},
        "metadata": {"tier": "gold"},
        "toolsets": ["files", "web"],
    }
    assert set(spec) == set(SPEC_FIELDS)
    assert violations(spec) == {}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("   ", "must not be blank"),
        ("", "must not be blank"),
        ("x" * 101, "is 101 characters; at most 100 allowed"),
        ("bell\x07", "must not contain control characters"),
        ("tab\there", "must not contain control characters"),
        ("new\nline", "must not contain control characters"),
        (42, "must be a string"),
    ],
)
def test_bad_names_are_refused(name: Any, problem: str) -> None:
    assert violations({"name": name}) == {"spec.name": problem}


def test_names_up_to_the_limit_and_unicode_are_accepted() -> None:
    assert violations({"name": "x" * 100}) == {}
    assert violations({"name": "Ünïcødé bøt 🤖"}) == {}


@pytest.mark.parametrize(
    "template_id", ["bad id", "-leading-dash", "slash/inside", "ünicode", "x" * 129]
)
def test_template_ids_must_match_the_token_pattern(template_id: str) -> None:
    assert "spec.template_id" in violations({"template_id": template_id})


def test_template_id_rules() -> None:
    assert violations({"template_id": " "}) == {"spec.template_id": "must not be blank"}
    assert violations({"template_id": "A1._-z"}) == {}
    assert violations({"template_id": "x" * 128}) == {}


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("", True),
        ("https://example.com/a.png", True),
        ("http://host", True),
        ("ftp://example.com/a.png", False),
        ("https://example.com/a b.png", False),
        ("javascript:alert(1)", False),
        ("example.com/a.png", False),
    ],
)
def test_avatar_url_must_be_http(url: str, ok: bool) -> None:
    assert (violations({"avatar_url": url}) == {}) is ok


def test_avatar_url_length_is_limited() -> None:
    url = "https://e.com/" + "a" * 2048
    assert violations({"avatar_url": url})["spec.avatar_url"].startswith("is 2062 characters")


def test_nul_is_refused_in_every_text_field_and_control_chars_outside_prose() -> None:
    assert violations({"description": "a\x00b"}) == {
        "spec.description": "must not contain NUL characters"
    }
    assert violations({"system_prompt": "a\x00b"}) == {
        "spec.system_prompt": "must not contain NUL characters"
    }
    # Prose fields keep their formatting (newlines, tabs); other control characters go.
    assert violations({"description": "tab\t nl\n cr\r"}) == {}
    assert violations({"system_prompt": "bell\x07"}) == {
        "spec.system_prompt": "must not contain control characters other than newlines and tabs"
    }
    assert violations({"owner_id": "team\na"}) == {
        "spec.owner_id": "must not contain control characters"
    }
    assert violations({"owner_id": "x" * 129}) == {
        "spec.owner_id": "is 129 characters; at most 128 allowed"
    }


def test_text_fields_must_be_strings() -> None:
    assert violations({"description": ["x"], "owner_id": None}) == {
        "spec.description": "must be a string",
        "spec.owner_id": "must be a string",
    }


# ------------------------------------------------------------------ spec: objects


def test_nul_characters_are_found_anywhere_inside_objects() -> None:
    spec = {
        "metadata": {"a": {"b": ["fine", "bad\x00"]}, "k\x00": 1},
        "template_config": {"deep": [{"x": "\x00"}]},
    }
    assert paths(spec) == {
        "spec.metadata.a.b[1]",
        "spec.metadata.'k\\x00'",
        "spec.template_config.deep[0].x",
    }


def test_objects_may_nest_32_levels_but_not_33() -> None:
    assert violations({"metadata": nested(MAX_DEPTH)}) == {}
    assert violations({"metadata": nested(MAX_DEPTH + 1)}) == {
        "spec.metadata": "is nested deeper than 32 levels"
    }
    deep_list: Any = "leaf"
    for _ in range(MAX_DEPTH + 1):
        deep_list = [deep_list]
    assert paths({"template_config": {"x": deep_list}}) == {"spec.template_config"}


def test_object_fields_must_be_objects() -> None:
    assert violations({"metadata": [], "template_config": "x", "conversation_config": 1}) == {
        "spec.metadata": "must be an object",
        "spec.template_config": "must be an object",
        "spec.conversation_config": "must be an object",
    }


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("temperature", [0, 0.0, 1.5, 2, None], [-0.1, 2.01, "1", True, False, [1]]),
        ("max_tokens", [1, 4096, 10.0, None], [0, -1, 1.5, True, "5"]),
        ("top_p", [0, 0.5, 1, None], [-0.01, 1.01, True, "0.5"]),
        ("historyLength", [0, 10, 3.0, None], [-1, 2.5, True, "3"]),
        ("history_length", [0, 10, None], [-1, 2.5, False]),
    ],
)
def test_conversation_config_limits(key: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert violations({"conversation_config": {key: value}}) == {}, value
    for value in bad:
        assert paths({"conversation_config": {key: value}}) == {
            f"spec.conversation_config.{key}"
        }, value


def test_conversation_config_reports_each_bad_key() -> None:
    config = {"temperature": 5, "max_tokens": 0, "top_p": 2, "historyLength": -1, "x": "free"}
    assert paths({"conversation_config": config}) == {
        "spec.conversation_config.temperature",
        "spec.conversation_config.max_tokens",
        "spec.conversation_config.top_p",
        "spec.conversation_config.historyLength",
    }


# ------------------------------------------------------------------ spec: toolsets


def test_toolsets_rules() -> None:
    assert violations({"toolsets": []}) == {}
    assert violations({"toolsets": "files"}) == {"spec.toolsets": "must be a list of names"}
    assert violations({"toolsets": ["files", "web", "files"]}) == {
        "spec.toolsets[2]": "duplicates toolset 'files'"
    }
    assert paths({"toolsets": ["ok", " ", 3, "x" * 129, "a\nb"]}) == {
        "spec.toolsets[1]",
        "spec.toolsets[2]",
        "spec.toolsets[3]",
        "spec.toolsets[4]",
    }
    assert violations({"toolsets": ["x" * 128]}) == {}


def test_at_most_64_toolsets() -> None:
    assert violations({"toolsets": [f"t{i}" for i in range(MAX_TOOLSETS)]}) == {}
    assert violations({"toolsets": [f"t{i}" for i in range(MAX_TOOLSETS + 1)]}) == {
        "spec.toolsets": "has 65 entries; at most 64"
    }


# ------------------------------------------------------------------ spec: whole


def test_unknown_fields_are_named() -> None:
    assert violations({"colour": "red"}) == {"spec.colour": "is not an agent field"}


def test_fields_not_in_the_spec_are_skipped() -> None:
    assert validate_fields({"name": "ok"}, ["name", "template_id", "colour"]) == []


def test_whole_spec_size_is_limited_to_256_kib() -> None:
    assert validate_size({"metadata": {"blob": "x" * (MAX_SPEC_BYTES - 100)}}) == []
    (violation,) = validate_size({"metadata": {"blob": "x" * MAX_SPEC_BYTES}})
    assert violation.field == "spec"
    assert "at most 262144 allowed" in violation.description
    # Size is measured in UTF-8 bytes, not characters.
    assert validate_size({"metadata": {"blob": "é" * (MAX_SPEC_BYTES // 2)}}) != []


@pytest.mark.parametrize(
    ("agent_id", "ok"),
    [
        ("a", True),
        ("A-1.b_c:d", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("-a", False),
        (".a", False),
        ("a b", False),
        ("a/b", False),
        ("ä", False),
    ],
)
def test_agent_id_pattern(agent_id: str, ok: bool) -> None:
    assert (validate_agent_id(agent_id) == []) is ok


def test_complete_fills_defaults_in_canonical_order() -> None:
    full = complete({"toolsets": ["x"], "name": "n", "colour": "dropped"})
    assert list(full) == list(SPEC_FIELDS)
    assert (full["name"], full["description"], full["metadata"], full["toolsets"]) == (
        "n",
        "",
        {},
        ["x"],
    )


def test_name_key_ignores_case_width_and_surrounding_space() -> None:
    assert name_key("Support Bot") == name_key("  support bot\t") == name_key("SUPPORT BOT")
    full_width = "".join(chr(ord(c) + 0xFEE0) if c != " " else c for c in "Support Bot")
    assert name_key(full_width) == name_key("support bot")
    assert name_key("Straße") == name_key("STRASSE")
    assert name_key("Support  Bot") != name_key("Support Bot")  # inner space counts
    assert name_uuid("Support Bot") == name_uuid(" SUPPORT BOT ")
    assert name_uuid("Support Bot") != name_uuid("Support Bots")


# ------------------------------------------------------------------ templates


def test_descriptor_round_trips_through_its_document() -> None:
    assert TemplateDescriptor.from_document(WORKFLOW.to_document()) == WORKFLOW
    minimal = TemplateDescriptor.from_document({"id": "t", "version": 3})
    assert (minimal.version, minimal.config_schema, minimal.config_fields) == (
        "3",
        {"type": "object"},
        [],
    )


@pytest.mark.parametrize("missing", ["id", "version"])
def test_descriptor_without_id_or_version_is_refused(missing: str) -> None:
    doc = SIMPLE.to_document()
    del doc[missing]
    with pytest.raises(ValueError, match=f"lacks '{missing}'"):
        TemplateDescriptor.from_document(doc)


@pytest.mark.parametrize(
    "schema",
    [{"type": 5}, {"type": "object", "properties": {"x": {"minLength": "one"}}}, {"required": 1}],
)
def test_descriptor_with_an_invalid_schema_is_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="template schema is invalid"):
        TemplateDescriptor.from_document({"id": "t", "version": "1", "config_schema": schema})


def test_validate_config_names_the_path_of_each_bad_value() -> None:
    config = {
        "steps": [{"name": "", "prompt": "p"}, {"prompt": 1, "timeout": 0}],
        "max_retries": 11,
    }
    got = {v.field for v in WORKFLOW.validate_config(config)}
    assert got == {
        "spec.template_config.max_retries",
        "spec.template_config.steps[0].name",
        "spec.template_config.steps[1]",
        "spec.template_config.steps[1].prompt",
        "spec.template_config.steps[1].timeout",
    }
    assert WORKFLOW.validate_config({"steps": [{"name": "s", "prompt": "p"}]}) == []
    (missing,) = WORKFLOW.validate_config({})
    assert missing.field == "spec.template_config"
    assert "'steps' is a required property" in missing.description
    (extra,) = SIMPLE.validate_config({"nope": 1}, path="template_config")
    assert extra.field == "template_config"


def test_validate_config_caps_the_number_of_violations() -> None:
    config = {"steps": [{"prompt": "p"} for _ in range(MAX_VIOLATIONS + 10)]}
    found = WORKFLOW.validate_config(config)
    assert len(found) == MAX_VIOLATIONS
    assert found[0].field == "spec.template_config.steps[0]"


def test_json_path() -> None:
    assert json_path("spec.x", ["a", 0, "b", 12]) == "spec.x.a[0].b[12]"
    assert json_path("spec.x", []) == "spec.x"


# ------------------------------------------------------------------ Agent aggregate


def test_register_completes_the_spec_and_records_who() -> None:
    agent = Agent.register("a1", {"name": "Bot", "template_id": "t"}, Status.ACTIVE, CTX)
    assert agent.id == agent_uuid("a1")
    assert agent_uuid("a1") != agent_uuid("a2")
    assert (agent.agent_id, agent.version, agent.status, agent.deleted) == (
        "a1",
        1,
        "active",
        False,
    )
    assert agent.spec == complete({"name": "Bot", "template_id": "t"})
    assert (agent.created_by, agent.updated_by) == ("tester", "tester")
    (event,) = agent.collect_events()
    assert isinstance(event, Agent.Registered)
    assert agent.registered_at == event.timestamp
    assert (event.actor, event.request_id) == ("tester", "req-1")


def test_change_configuration_records_only_real_changes() -> None:
    agent = agent_at("created")
    changed = agent.change_configuration(
        {"name": "Bot", "description": "new", "toolsets": ["x"]}, OTHER
    )
    assert changed == ["description", "toolsets"]
    (event,) = agent.collect_events()
    assert isinstance(event, Agent.ConfigurationChanged)
    assert event.changes == {"description": "new", "toolsets": ["x"]}
    assert (agent.spec["description"], agent.spec["name"], agent.updated_by) == (
        "new",
        "Bot",
        "bob",
    )


def test_change_configuration_with_unchanged_values_records_nothing() -> None:
    agent = agent_at("created")
    assert agent.change_configuration({"name": "Bot", "template_id": "t"}, OTHER) == []
    assert agent.change_configuration({}, OTHER) == []
    assert agent.collect_events() == []
    assert (agent.version, agent.updated_by) == (1, "tester")


def test_delete_marks_the_agent_deleted() -> None:
    agent = agent_at("active")
    agent.delete(OTHER)
    (event,) = agent.collect_events()
    assert isinstance(event, Agent.Deleted)
    assert (agent.deleted, agent.version, agent.updated_by) == (True, 2, "bob")


@pytest.mark.parametrize(
    "command",
    [
        lambda a: a.change_configuration({"name": "x"}, CTX),
        lambda a: a.change_status(Status.ACTIVE, "", CTX),
        lambda a: a.delete(CTX),
    ],
    ids=["configure", "status", "delete"],
)
def test_commands_on_a_deleted_agent_say_not_found(command: Any) -> None:
    agent = agent_at("created")
    agent.delete(CTX)
    agent.collect_events()
    with pytest.raises(AgentNotFound) as info:
        command(agent)
    assert info.value.agent_id == "a1"
    assert agent.collect_events() == []


def test_reregister_starts_a_new_lifecycle_only_after_deletion() -> None:
    agent = agent_at("active")
    with pytest.raises(AgentAlreadyExists):
        agent.reregister({"name": "Again", "template_id": "t"}, Status.CREATED, OTHER)
    assert agent.collect_events() == []
    agent.delete(CTX)
    agent.reregister({"name": "Again", "template_id": "t"}, Status.INACTIVE, OTHER)
    events = agent.collect_events()
    assert isinstance(events[-1], Agent.Reregistered)
    assert (agent.deleted, agent.version, agent.status, agent.spec["name"]) == (
        False,
        3,
        "inactive",
        "Again",
    )
    assert agent.spec["description"] == ""  # a fresh spec, not merged with the old one
    assert (agent.created_by, agent.registered_at) == ("bob", events[-1].timestamp)


# ------------------------------------------------------------------ AgentName index


def test_agent_name_claim_release_and_reclaim() -> None:
    index = AgentName.claim_new("Bot", "a1")
    assert (index.id, index.name, index.holder) == (name_uuid("bot"), "Bot", "a1")
    index.release("a2")  # not the holder: nothing happens
    assert index.holder == "a1"
    assert len(index.collect_events()) == 1
    index.release("a1")
    assert index.holder is None
    index.reclaim("BOT", "a2")
    assert (index.name, index.holder, index.version) == ("BOT", "a2", 3)
    kinds = [type(e) for e in index.collect_events()]
    assert kinds == [AgentName.Released, AgentName.Reclaimed]


def test_releasing_a_free_name_records_nothing() -> None:
    index = AgentName.claim_new("Bot", "a1")
    index.release("a1")
    index.collect_events()
    index.release("a1")
    assert index.collect_events() == []


# ------------------------------------------------------------------ describe()


def test_describe_every_event_type() -> None:
    agent = Agent.register(
        "a1", {"name": "Bot", "template_id": "t", "description": "d"}, Status.CREATED, CTX
    )
    agent.change_configuration({"description": "e", "owner_id": "o"}, OTHER)
    agent.change_status(Status.ACTIVE, "go", OTHER)
    agent.delete(OTHER)
    agent.reregister({"name": "Bot2", "template_id": "t"}, Status.ACTIVE, CTX)
    entries = [describe(e) for e in agent.collect_events()]

    assert [(e.type, e.version) for e in entries] == [
        ("registered", 1),
        ("configuration_changed", 2),
        ("status_changed", 3),
        ("deleted", 4),
        ("reregistered", 5),
    ]
    registered, changed, status, deleted, again = entries
    assert registered.changes == {"name": "Bot", "template_id": "t", "description": "d"}
    assert registered.changed_fields == ("description", "name", "template_id")
    assert (registered.from_status, registered.to_status) == ("", "created")
    assert (registered.actor, registered.request_id, registered.agent_id) == (
        "tester",
        "req-1",
        "a1",
    )
    assert changed.changes == {"description": "e", "owner_id": "o"}
    assert changed.changed_fields == ("description", "owner_id")
    assert (changed.to_status, changed.actor, changed.request_id) == ("", "bob", "req-2")
    assert (status.from_status, status.to_status, status.reason) == ("created", "active", "go")
    assert (status.changes, status.changed_fields) == ({}, ())
    assert (deleted.changes, deleted.to_status, deleted.actor) == ({}, "", "bob")
    assert again.changes == {"name": "Bot2", "template_id": "t"}
    assert again.to_status == "active"
    assert [e.occurred_at for e in entries] == sorted(e.occurred_at for e in entries)


# ------------------------------------------------------ steps must not form a cycle

LIMITS = {"run_timeout_seconds": 300.0, "max_steps": 10.0}


def step(name: str, *depends_on: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "depends_on": list(depends_on), **more}


def flow_problems(*steps: dict[str, Any] | str, **config: Any) -> dict[str, str]:
    found = FLOW.validate_config({"steps": list(steps), **config}, limits=LIMITS)
    return {v.field.removeprefix("spec.template_config."): v.description for v in found}


def task_problems(*steps: dict[str, Any] | str) -> dict[str, str]:
    found = TASKS.validate_config({"steps": list(steps)}, limits=LIMITS)
    return {v.field.removeprefix("spec.template_config."): v.description for v in found}


def test_steps_without_a_cycle_pass() -> None:
    assert flow_problems(step("a"), step("b", "a"), step("c", "a", "b")) == {}


def test_a_cycle_of_two_steps_is_refused_at_the_dependency_closing_it() -> None:
    assert flow_problems(step("a", "b"), step("b", "a")) == {
        "steps[1].depends_on[0]": "steps depend on each other in a cycle: a -> b -> a"
    }


def test_a_cycle_of_three_steps_names_every_step_in_it() -> None:
    got = flow_problems(step("start"), step("a", "start", "c"), step("b", "a"), step("c", "b"))
    # b's dependency on a closes the cycle found from a.
    assert got == {
        "steps[2].depends_on[0]": "steps depend on each other in a cycle: a -> c -> b -> a"
    }


def test_independent_cycles_are_each_reported() -> None:
    got = flow_problems(step("a", "b"), step("b", "a"), step("c", "d"), step("d", "c"))
    assert got == {
        "steps[1].depends_on[0]": "steps depend on each other in a cycle: a -> b -> a",
        "steps[3].depends_on[0]": "steps depend on each other in a cycle: c -> d -> c",
    }


def test_a_step_depending_on_itself_is_refused() -> None:
    assert flow_problems(step("a"), step("b", "a", "b")) == {
        "steps[1].depends_on[1]": "a step cannot depend on itself"
    }
    # By its id, or by its name when it has an id: the same step either way.
    assert flow_problems(step("b", "b", id="x")) == {
        "steps[0].depends_on[0]": "a step cannot depend on itself"
    }


def test_a_dependency_on_no_step_is_refused_naming_the_step_ids() -> None:
    assert flow_problems(step("a"), step("b", "a", "nope", id="B")) == {
        "steps[1].depends_on[1]": "'nope' names no step (step ids: a, B)"
    }


def test_a_step_key_defaults_to_its_name_and_a_name_may_stand_for_its_step() -> None:
    # "a" has the id "first": `depends_on` may use either; "b" has no id: its name is its key.
    assert flow_problems(step("a", id="first"), step("b", "a"), step("c", "first", "b")) == {}
    assert flow_problems(step("a", "c", id="first"), step("b", "a"), step("c", "b")) == {
        "steps[1].depends_on[0]": "steps depend on each other in a cycle: first -> c -> b -> first"
    }


def test_a_name_shared_by_several_steps_cannot_be_a_dependency() -> None:
    got = flow_problems(step("same", id="x"), step("same", id="y"), step("z", "same"))
    assert got == {"steps[2].depends_on[0]": "name 'same' is shared by several steps; use an id"}


def test_steps_with_the_same_key_are_refused() -> None:
    got = flow_problems(step("a"), step("b", id="a"), step("c", "a"))
    assert got == {"steps[1].id": "id 'a' is the id of step 0 too; ids must differ"}


def test_task_steps_default_to_their_position_as_id() -> None:
    assert task_problems("first", {"instruction": "second", "depends_on": ["step_1"]}) == {}
    got = task_problems(
        {"depends_on": ["step_2"]}, {"depends_on": ["step_1"]}, {"id": "own", "depends_on": []}
    )
    assert got == {
        "steps[1].depends_on[0]": "steps depend on each other in a cycle: step_1 -> step_2 -> step_1"
    }
    # A task step's name is no alias: only ids count.
    assert task_problems({"name": "Read"}, {"depends_on": ["Read"]}) == {
        "steps[1].depends_on[0]": "'Read' names no step (step ids: step_1, step_2)"
    }


def test_a_reserved_id_is_refused() -> None:
    assert task_problems("go", {"id": "synthesis"}) == {"steps[1].id": "id 'synthesis' is reserved"}


def test_steps_the_schema_refuses_are_left_to_the_schema() -> None:
    # A step without a name has no key: only the schema's error is reported.
    got = flow_problems(step("a", "b"), {"depends_on": ["a"]})
    assert set(got) == {"steps[1]"}
    assert "'name' is a required property" in got["steps[1]"]


# ------------------------------------------------------ values under the executors' ceilings


@pytest.mark.parametrize(
    ("timeout", "refused"), [(299, False), (300, False), (301, True), (None, False)]
)
def test_a_timeout_above_the_run_timeout_ceiling_is_refused(
    timeout: int | None, refused: bool
) -> None:
    got = flow_problems(step("a", timeout=timeout))
    if refused:
        assert got == {
            "steps[0].timeout": "is 301, above the executors' run_timeout_seconds ceiling of 300"
        }
    else:
        assert got == {}
    if timeout is not None:
        assert ("step_timeout" in flow_problems(step("a"), step_timeout=timeout)) is refused


@pytest.mark.parametrize(("count", "refused"), [(6, False), (7, False), (8, True)])
def test_more_steps_than_max_steps_allows_are_refused(count: int, refused: bool) -> None:
    got = flow_problems(*(step(f"s{i}") for i in range(count)))
    if refused:
        assert got == {
            "steps": "has 8 items; at most 7 fit the executors' max_steps ceiling of 10 "
            "(the template's graph takes 3 more)"
        }
    else:
        assert got == {}


def test_without_a_published_ceiling_nothing_is_bounded() -> None:
    config = {"steps": [step(f"s{i}", timeout=10_000) for i in range(30)], "step_timeout": 9999}
    assert FLOW.validate_config(config) == []
    assert FLOW.validate_config(config, limits={"max_tool_calls": 5}) == []


def test_descriptors_tell_whether_they_use_ceilings() -> None:
    assert FLOW.uses_ceilings
    assert not TASKS.uses_ceilings
    assert not SIMPLE.uses_ceilings


# ------------------------------------------------------------------ the executor fleet


def test_the_fleet_is_what_every_live_executor_can_run() -> None:
    one = executor_report("one", ("offline", "gpt"), run_timeout_seconds=300, max_steps=50)
    two = executor_report("two", ("offline", "gpt", "local"), run_timeout_seconds=120)
    fleet = fleet_of([one, two], time.time())
    assert fleet.providers == {"offline", "gpt"}
    assert fleet.limits == {"run_timeout_seconds": 120, "max_steps": 50}


def test_expired_executors_count_only_when_none_is_live() -> None:
    gone = executor_report("gone", ("old",), expires_in=-600, published_ago=900)
    later = executor_report("later", ("newer",), expires_in=-10, published_ago=200)
    live = executor_report("live", ("offline",))
    assert fleet_of([gone, later, live], time.time()).providers == {"offline"}
    # No executor is up: the one seen last describes the deployment.
    assert fleet_of([gone, later], time.time()).providers == {"newer"}
    assert fleet_of([], time.time()) == UNKNOWN
    assert not UNKNOWN.known


def test_llm_config_id_must_name_a_provider_of_the_fleet() -> None:
    fleet = ExecutorFleet(frozenset({"offline", "gpt"}))
    assert check_llm_config_id("gpt", fleet) == []
    assert check_llm_config_id("", fleet) == []  # the default provider
    (bad,) = check_llm_config_id("claude", fleet)
    assert bad.field == "spec.llm_config_id"
    assert "'claude'" in bad.description
    assert "known provider ids: gpt, offline" in bad.description
    assert check_llm_config_id("claude", UNKNOWN) == []


def test_executor_entries_are_parsed_and_bad_ones_refused() -> None:
    doc = {
        "executor_id": "e1",
        "providers": ["offline"],
        "limits": {"max_steps": 50},
        "published_at": 1.0,
        "expires_at": 2.0,
    }
    report = ExecutorReport.from_document(doc)
    assert (report.providers, report.limits, report.expires_at) == (
        frozenset({"offline"}),
        {"max_steps": 50.0},
        2.0,
    )
    for bad in (
        {**doc, "providers": "offline"},
        {**doc, "limits": {"max_steps": 0}},
        {**doc, "limits": {"max_steps": True}},
        {k: v for k, v in doc.items() if k != "expires_at"},
        {**doc, "expires_at": "soon"},
    ):
        with pytest.raises(ValueError, match="executor entry"):
            ExecutorReport.from_document(bad)


def test_a_huge_step_graph_is_refused_before_its_graph_is_walked() -> None:
    from agent_registry.domain.templates import MAX_GRAPH_ITEMS, TemplateDescriptor

    rule = {"key": ["id"], "depends_on": "depends_on"}
    bounded = TemplateDescriptor.from_document(
        {
            "id": "flow",
            "version": "1",
            "config_schema": {
                "type": "object",
                "properties": {
                    "steps": {"type": "array", "maxItems": 20, "x-agentrt-acyclic": rule}
                },
            },
        }
    )
    unbounded = TemplateDescriptor.from_document(
        {
            "id": "flow",
            "version": "1",
            "config_schema": {
                "type": "object",
                "properties": {"steps": {"type": "array", "x-agentrt-acyclic": rule}},
            },
        }
    )
    # Mutual pairs: 4,000 two-step cycles.
    pairs = [{"id": f"s{i}", "depends_on": [f"s{i ^ 1}"]} for i in range(8_000)]
    over_max = bounded.validate_config({"steps": pairs})
    over_cap = unbounded.validate_config({"steps": pairs})
    assert [v.field for v in over_max] == ["spec.template_config.steps"]
    assert "is too long" in over_max[0].description
    assert [v.field for v in over_cap] == ["spec.template_config.steps"]
    assert f"at most {MAX_GRAPH_ITEMS}" in over_cap[0].description
    many = unbounded.validate_config({"steps": pairs[:MAX_GRAPH_ITEMS]})
    assert 0 < len(many) <= 50  # every cycle named, up to the report's bound
