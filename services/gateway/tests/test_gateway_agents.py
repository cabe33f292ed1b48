"""Agent reads through the gateway, against a real registry over gRPC."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_support import (
    AGENT_KEYS,
    CONFIGURATION_KEYS,
    ERROR_KEYS,
    TOKEN,
    Stack,
    World,
    auth,
    code_of,
)

from agentrt.registry.v1 import registry_pb2 as rpb


async def test_an_agent_reads_back_with_exactly_the_compat_keys_and_its_version_as_etag(
    world: World,
) -> None:
    agent = await world.create(
        "Reader",
        system_prompt="Be brief.",
        template_config={"response_prefix": "> "},
        toolsets=["custom"],
        metadata={"team": "docs"},
    )
    for path in (f"/v1/agents/{agent.id}", f"/v1/agents/{agent.id}/"):
        reply = await world.client.get(path, headers=auth())
        assert reply.status_code == 200
        body = reply.json()
        assert set(body) == AGENT_KEYS
        assert set(body["configuration"]) == CONFIGURATION_KEYS
        assert reply.headers["etag"] == f'"{agent.version}"'
    assert body["name"] == "Reader"
    assert body["status"] == "active"
    assert body["template_id"] == "simple-test"
    assert body["configuration"]["system_prompt"] == "Be brief."
    assert body["configuration"]["template_config"] == {"response_prefix": "> "}
    assert body["configuration"]["toolsets"] == ["custom"]
    assert body["metadata"] == {"team": "docs"}
    assert body["created_at"].endswith("Z")


async def test_an_earlier_version_is_read_with_the_version_query(world: World) -> None:
    agent = await world.create("Before")
    updated = await world.registry.stub().UpdateAgent(
        rpb.UpdateAgentRequest(agent_id=agent.id, spec=rpb.AgentSpec(name="After"))
    )
    latest = await world.client.get(f"/v1/agents/{agent.id}", headers=auth())
    assert (latest.json()["name"], latest.headers["etag"]) == (
        "After",
        f'"{updated.agent.version}"',
    )
    old = await world.client.get(f"/v1/agents/{agent.id}?version={agent.version}", headers=auth())
    assert (old.json()["name"], old.headers["etag"]) == ("Before", f'"{agent.version}"')


async def test_agents_are_listed_as_a_bare_array_with_filters_and_paging(world: World) -> None:
    made = [await world.create(f"List {i}") for i in range(5)]
    await world.create("Inactive one", status=rpb.AGENT_STATUS_INACTIVE)
    await world.create("Other template", template_id="other")

    async def ids(query: str) -> list[str]:
        reply = await world.client.get(f"/v1/agents/{query}", headers=auth())
        assert reply.status_code == 200
        body = reply.json()
        assert isinstance(body, list)
        assert all(set(a) == AGENT_KEYS for a in body)
        return [a["id"] for a in body]

    every = await ids("")
    assert len(every) == 7
    other = await ids("?template_id=other")
    assert len(other) == 1
    assert set(await ids("?template_id=simple-test")) == set(every) - set(other)
    assert {a.id for a in made} <= set(every)
    assert len(await ids("?active_only=true")) == 6
    assert await ids("?limit=2&offset=1") == every[1:3]
    assert await ids("?offset=6") == every[6:]
    assert await ids("?offset=50") == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/agents?limit=0", "query.limit"),
        ("/v1/agents?limit=5000", "query.limit"),
        ("/v1/agents?offset=-1", "query.offset"),
        ("/v1/agents?active_only=maybe", "query.active_only"),
        ("/v1/agents/x?version=0", "query.version"),
        ("/v1/agents/" + "x" * 129, "path.agent_id"),
    ],
)
async def test_bad_queries_are_refused_naming_the_field(
    world: World, path: str, field: str
) -> None:
    reply = await world.client.get(path, headers=auth())
    assert reply.status_code == 422
    body = reply.json()
    assert code_of(body) == "VALIDATION_ERROR"
    assert [f["field"] for f in body["details"]["fields"]] == [field]


async def test_an_unknown_agent_is_a_404_and_reading_needs_a_token(world: World) -> None:
    missing = await world.client.get("/v1/agents/no-such-agent", headers=auth())
    assert missing.status_code == 404
    assert code_of(missing.json()) == "AGENT_NOT_FOUND"
    assert set(missing.json()) == ERROR_KEYS
    assert (await world.client.get("/v1/agents")).status_code == 401
    assert (
        await world.client.get("/v1/agents", headers={"Authorization": f"Bearer {TOKEN}"})
    ).status_code == 200


async def test_a_registry_that_is_down_is_a_503_with_retry_after(world: World) -> None:
    await world.registry.stop()
    reply = await world.client.get("/v1/agents", headers=auth())
    assert reply.status_code == 503
    assert code_of(reply.json()) == "SERVICE_UNAVAILABLE"
    assert reply.headers["retry-after"] == "1"


OLD_SDK_CREATE = {
    "id": None,
    "name": "Old SDK agent",
    "description": None,
    "avatar_url": None,
    "type": None,
    "template_id": "simple-test",
    "template_version_id": None,
    "template_config": {"response_prefix": "> "},
    "system_prompt": "Be brief.",
    "conversation_config": None,
    "toolsets": None,
    "llm_config_id": None,
    "agent_line_id": None,
    "version_type": None,
    "version_number": None,
    "owner_id": None,
    "status": "draft",  # the old SDK's default
}


async def test_the_old_sdks_create_body_with_every_key_and_nulls_creates_the_agent(
    world: World,
) -> None:
    for path in ("/v1/agents", "/v1/agents/"):
        body = {**OLD_SDK_CREATE, "name": f"Old SDK agent {path}"}
        reply = await world.client.post(path, json=body, headers=auth())
        assert reply.status_code == 201, reply.text
        created = reply.json()
        assert set(created) == {"success", "agent_id", "message", "validation_results"}
        assert created["success"] is True
        assert created["validation_results"]["valid"] is True
        assert any("'draft'" in w for w in created["validation_results"]["warnings"])
        assert reply.headers["location"] == f"/v1/agents/{created['agent_id']}"
        agent = (await world.client.get(reply.headers["location"], headers=auth())).json()
        assert (agent["name"], agent["status"]) == (body["name"], "created")
        assert agent["configuration"]["system_prompt"] == "Be brief."
        assert reply.headers["etag"] == '"1"'


async def test_an_agent_status_on_create_sets_the_initial_status(world: World) -> None:
    for status in ("created", "active", "inactive", "error"):
        body = {"name": f"Starts {status}", "template_id": "simple-test", "status": status}
        reply = await world.client.post("/v1/agents", json=body, headers=auth())
        assert reply.status_code == 201, reply.text
        assert not any("status" in w for w in reply.json()["validation_results"]["warnings"])
        agent = await world.client.get(reply.headers["location"], headers=auth())
        assert agent.json()["status"] == status


async def test_unknown_create_keys_are_refused_each_named(world: World) -> None:
    body = {"name": "Typo", "template_id": "simple-test", "tools": ["custom"], "colour": "red"}
    reply = await world.client.post("/v1/agents", json=body, headers=auth())
    assert reply.status_code == 422
    fields = [f["field"] for f in reply.json()["details"]["fields"]]
    assert sorted(fields) == ["body.colour", "body.tools"]
    assert reply.json()["details"]["reason"] == "UNKNOWN_FIELD"
    assert (await world.client.get("/v1/agents", headers=auth())).json() == []


async def test_update_and_status_change_ignore_unknown_keys(world: World) -> None:
    agent = await world.create("Lenient")
    path = f"/v1/agents/{agent.id}"
    reply = await world.client.put(
        path, json={"description": "new", "colour": "red"}, headers=auth()
    )
    assert reply.status_code == 200, reply.text
    reply = await world.client.patch(
        f"{path}/status", json={"status": "inactive", "reason": "paused"}, headers=auth()
    )
    assert (reply.status_code, reply.json()["status"]) == (200, "inactive")


async def test_a_put_may_repeat_the_status_but_not_change_it(world: World) -> None:
    agent = await world.create("Steady")
    path = f"/v1/agents/{agent.id}"
    same = await world.client.put(path, json={"status": "active"}, headers=auth())
    assert (same.status_code, same.json()["status"]) == (200, "active")
    changed = await world.client.put(
        path, json={"status": "inactive", "description": "x"}, headers=auth()
    )
    assert (changed.status_code, code_of(changed.json())) == (409, "CONFLICT")
    assert [f["field"] for f in changed.json()["details"]["fields"]] == ["body.status"]
    after = (await world.client.get(path, headers=auth())).json()
    assert after["status"] == "active"  # nothing half-applied
    # Old clients PUT their create body: a status that is no agent status is ignored.
    draft = await world.client.put(
        path, json={"status": "draft", "description": "y"}, headers=auth()
    )
    assert (draft.status_code, draft.json()["status"]) == (200, "active")


async def test_a_client_chosen_id_is_kept_and_a_taken_name_is_a_conflict(world: World) -> None:
    body = {"id": "my-agent-1", "name": "Chosen", "template_id": "simple-test"}
    reply = await world.client.post("/v1/agents", json=body, headers=auth())
    assert (reply.status_code, reply.json()["agent_id"]) == (201, "my-agent-1")
    again = await world.client.post("/v1/agents", json={**body, "id": "my-agent-2"}, headers=auth())
    assert again.status_code == 409
    assert code_of(again.json()) == "CONFLICT"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"template_id": "simple-test"}, "body.name"),
        ({"name": "   ", "template_id": "simple-test"}, "body.name"),
        ({"name": "x" * 101, "template_id": "simple-test"}, "body.name"),
        ({"name": "bell\x07", "template_id": "simple-test"}, "body.name"),
        ({"name": 5, "template_id": "simple-test"}, "body.name"),
        ({"name": "ok", "status": 5}, "body.status"),
        ({"name": "ok", "status": "s" * 65}, "body.status"),
        ({"name": "ok", "tools": ["custom"]}, "body.tools"),
        ({"name": "ok", "toolsets": "custom"}, "body.toolsets"),
        ({"name": "ok", "system_prompt": "x" * 32_001}, "body.system_prompt"),
    ],
)
async def test_a_bad_create_body_is_refused_naming_the_field_and_creates_nothing(
    world: World, body: dict[str, Any], field: str
) -> None:
    reply = await world.client.post("/v1/agents", json=body, headers=auth())
    assert reply.status_code == 422
    assert code_of(reply.json()) == "VALIDATION_ERROR"
    assert field in [f["field"] for f in reply.json()["details"]["fields"]]
    assert (await world.client.get("/v1/agents", headers=auth())).json() == []


async def test_the_registrys_refusal_of_a_config_names_the_field(world: World) -> None:
    body = {"name": "Nowhere", "template_id": "no-such-template"}
    reply = await world.client.post("/v1/agents", json=body, headers=auth())
    assert reply.status_code == 400
    assert code_of(reply.json()) == "VALIDATION_ERROR"
    assert "spec.template_id" in [f["field"] for f in reply.json()["details"]["fields"]]


async def test_status_changes_are_conditional_on_if_match(world: World) -> None:
    agent = await world.create("Status")
    path = f"/v1/agents/{agent.id}/status"
    stale = await world.client.patch(
        path, json={"status": "inactive"}, headers={**auth(), "If-Match": '"99"'}
    )
    assert (stale.status_code, stale.json()["error"]) == (412, "PRECONDITION_FAILED")
    malformed = await world.client.patch(
        path, json={"status": "inactive"}, headers={**auth(), "If-Match": "99"}
    )
    assert (malformed.status_code, malformed.json()["error"]) == (400, "VALIDATION_ERROR")
    changed = await world.client.patch(
        path + "/",
        json={"status": "inactive"},
        headers={**auth(), "If-Match": f'"{agent.version}"'},
    )
    assert changed.status_code == 200
    assert changed.json()["status"] == "inactive"
    assert changed.headers["etag"] == f'"{agent.version + 1}"'
    bad = await world.client.patch(path, json={"status": "asleep"}, headers=auth())
    assert bad.status_code == 422
    missing = await world.client.patch(
        "/v1/agents/nobody/status", json={"status": "active"}, headers=auth()
    )
    assert (missing.status_code, missing.json()["error"]) == (404, "AGENT_NOT_FOUND")


async def test_a_deleted_agent_is_gone(world: World) -> None:
    agent = await world.create("Doomed")
    stale = await world.client.delete(
        f"/v1/agents/{agent.id}", headers={**auth(), "If-Match": '"42"'}
    )
    assert stale.status_code == 412
    reply = await world.client.delete(f"/v1/agents/{agent.id}/", headers=auth())
    assert (reply.status_code, reply.json()) == (
        200,
        {"success": True, "agent_id": agent.id, "message": "Agent deleted"},
    )
    assert (await world.client.get(f"/v1/agents/{agent.id}", headers=auth())).status_code == 404
    again = await world.client.delete(f"/v1/agents/{agent.id}", headers=auth())
    assert again.status_code == 404


async def test_an_update_changes_only_the_fields_given_in_either_shape(world: World) -> None:
    agent = await world.create(
        "Editable", system_prompt="First.", metadata={"keep": True}, llm_config_id="offline"
    )
    reply = await world.client.put(
        f"/v1/agents/{agent.id}",
        json={
            "name": "Edited",
            "system_prompt": "Top-level loses.",
            "configuration": {"system_prompt": "Second.", "template_config": {"a": 1}},
            "llm_config_id": None,  # null: unchanged
            "unknown": "ignored",
        },
        headers=auth(),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["name"] == "Edited"
    assert body["configuration"]["system_prompt"] == "Second."
    assert body["configuration"]["template_config"] == {"a": 1}
    assert body["configuration"]["llm_config_id"] == "offline"
    assert body["metadata"] == {"keep": True}
    assert reply.headers["etag"] == f'"{agent.version + 1}"'

    flat = await world.client.put(
        f"/v1/agents/{agent.id}/", json={"toolsets": ["custom"]}, headers=auth()
    )
    assert flat.json()["configuration"]["toolsets"] == ["custom"]
    assert flat.json()["name"] == "Edited"


async def test_an_update_is_conditional_and_refused_like_a_create(world: World) -> None:
    agent = await world.create("Guarded")
    await world.create("Taken")
    path = f"/v1/agents/{agent.id}"
    stale = await world.client.put(
        path, json={"name": "Late"}, headers={**auth(), "If-Match": '"77"'}
    )
    assert (stale.status_code, stale.json()["error"]) == (412, "PRECONDITION_FAILED")
    taken = await world.client.put(path, json={"name": "Taken"}, headers=auth())
    assert (taken.status_code, taken.json()["error"]) == (409, "CONFLICT")
    blank = await world.client.put(path, json={"name": " "}, headers=auth())
    assert blank.status_code == 422
    nowhere = await world.client.put(path, json={"template_id": "gone"}, headers=auth())
    assert nowhere.status_code == 400
    assert "spec.template_id" in [f["field"] for f in nowhere.json()["details"]["fields"]]
    missing = await world.client.put("/v1/agents/nobody", json={"name": "x"}, headers=auth())
    assert (missing.status_code, missing.json()["error"]) == (404, "AGENT_NOT_FOUND")
    unchanged = await world.client.get(path, headers=auth())
    assert (unchanged.json()["name"], unchanged.headers["etag"]) == (
        "Guarded",
        f'"{agent.version}"',
    )


async def test_an_agents_history_lists_its_events_oldest_first_in_pages(world: World) -> None:
    agent = await world.create("Historic")
    await world.client.put(f"/v1/agents/{agent.id}", json={"name": "Renamed"}, headers=auth())
    await world.client.patch(
        f"/v1/agents/{agent.id}/status", json={"status": "inactive"}, headers=auth()
    )
    reply = await world.client.get(f"/v1/agents/{agent.id}/history/", headers=auth())
    assert reply.status_code == 200
    events = reply.json()["events"]
    assert [e["type"] for e in events] == ["registered", "configuration_changed", "status_changed"]
    assert [e["version"] for e in events] == [1, 2, 3]
    assert events[1]["changed_fields"] == ["name"]
    assert events[1]["changes"] == {"name": "Renamed"}
    assert (events[2]["from_status"], events[2]["to_status"]) == ("active", "inactive")
    assert reply.json()["next_page_token"] is None

    first = await world.client.get(f"/v1/agents/{agent.id}/history?page_size=2", headers=auth())
    token = first.json()["next_page_token"]
    assert [e["version"] for e in first.json()["events"]] == [1, 2]
    rest = await world.client.get(
        f"/v1/agents/{agent.id}/history", params={"page_token": token}, headers=auth()
    )
    assert [e["version"] for e in rest.json()["events"]] == [3]

    missing = await world.client.get("/v1/agents/nobody/history", headers=auth())
    assert missing.status_code == 404
    bad = await world.client.get(
        f"/v1/agents/{agent.id}/history?page_token=garbage", headers=auth()
    )
    assert (bad.status_code, bad.json()["error"]) == (400, "VALIDATION_ERROR")


async def test_what_would_fail_at_run_time_is_refused_at_create(stack: Stack) -> None:
    """Cycles, unknown providers and limits past the executor's ceiling: a 400 naming each."""
    steps = [
        {"name": "a", "prompt": "one", "depends_on": ["c"]},
        {"name": "b", "prompt": "two", "depends_on": ["a"]},
        {"name": "c", "prompt": "three", "depends_on": ["b"]},
    ]
    body = {
        "name": "Looping",
        "template_id": "langgraph-workflow",
        "template_config": {"steps": steps},
    }
    cases = [
        (body, "spec.template_config.steps[1].depends_on[0]", "a -> c -> b -> a"),
        (
            {"name": "Far", "template_id": "simple-test", "llm_config_id": "no-such-model"},
            "spec.llm_config_id",
            "offline",
        ),
        (
            {
                "name": "Slow",
                "template_id": "langgraph-workflow",
                "template_config": {"steps": [{"name": "a", "prompt": "x", "timeout": 10**6}]},
            },
            "spec.template_config.steps[0].timeout",
            "ceiling",
        ),
    ]
    for values, field, says in cases:
        for _ in range(250):  # until the registry has seen the executor's report
            reply = await stack.client.post("/v1/agents", json=values, headers=auth())
            if reply.status_code != 201:
                break
            await stack.client.delete(reply.headers["location"], headers=auth())
        assert reply.status_code == 400, reply.text
        fields = {f["field"]: f["description"] for f in reply.json()["details"]["fields"]}
        assert field in fields, fields
        assert says in fields[field]
    listed = (await stack.client.get("/v1/agents", headers=auth())).json()
    assert [a["name"] for a in listed] == []


async def test_versions_past_int64_are_bad_input_not_a_failure(world: World) -> None:
    agent = await world.create("Huge")
    path = f"/v1/agents/{agent.id}"
    huge = "9" * 20
    read = await world.client.get(f"{path}?version={huge}", headers=auth())
    assert read.status_code == 422
    for method, body in (("PUT", {"description": "x"}), ("DELETE", None)):
        reply = await world.client.request(
            method, path, json=body, headers={**auth(), "If-Match": f'"{huge}"'}
        )
        assert reply.status_code == 400, reply.text
        assert reply.json()["details"]["fields"][0]["field"] == "header.if-match"
