"""`Idempotency-Key` on `POST /v1/agents`: a retried create answers the first one's agent.

Against the real registry over gRPC: the key names the agent (a UUID derived from the
caller and the key), a retry finds it registered and is answered as the first request
was, and the key sent with another request is refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from executor_support import eventually
from gateway_support import ERROR_KEYS, Stack, World, auth, code_of, keyring

from agentrt_kit.nats import Names
from agentrt_testkit.audit import records_of, wait_for_records

MakeStack = Callable[..., Awaitable[Stack]]
CREATED_KEYS = {"success", "agent_id", "message", "validation_results"}


def keyed(key: str | bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {**(headers or auth()), "Idempotency-Key": key}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def agent_ids(client: httpx.AsyncClient) -> list[str]:
    reply = await client.get("/v1/agents", headers=auth())
    assert reply.status_code == 200, reply.text
    return [a["id"] for a in reply.json()]


async def test_a_retried_create_answers_the_first_agent_as_it_is_now(world: World) -> None:
    body = {
        "id": None,
        "name": "  Keyed  ",  # the registry trims it: the retry is still the same request
        "template_id": "simple-test",
        "system_prompt": "Be brief.",
        "template_config": {"response_prefix": "> "},
        "conversation_config": {"temperature": 1, "max_tokens": 64},  # kept as doubles
        "toolsets": [],
        "metadata": {"team": "docs", "pinned": True},
        "status": "draft",  # ignored with a warning, both times
    }
    first = await world.client.post("/v1/agents", json=body, headers=keyed("create-1"))
    assert first.status_code == 201, first.text
    created = first.json()
    assert set(created) == CREATED_KEYS
    assert "idempotent-replayed" not in first.headers
    agent_id = created["agent_id"]
    assert str(uuid.UUID(agent_id)) == agent_id  # looks like the ids old clients get
    assert any("'draft'" in w for w in created["validation_results"]["warnings"])

    again = await world.client.post("/v1/agents/", json=body, headers=keyed("create-1"))
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    replayed = again.json()
    # The registry remarks on a configuration when it registers it, not again: a replay
    # repeats the gateway's own warnings only.
    warnings = replayed["validation_results"].pop("warnings")
    assert warnings == [w for w in created["validation_results"].pop("warnings") if "draft" in w]
    assert warnings
    assert replayed == created
    assert again.headers["location"] == first.headers["location"] == f"/v1/agents/{agent_id}"
    assert again.headers["etag"] == first.headers["etag"] == '"1"'

    # A retry after the agent changed answers the agent as it is now.
    started = await world.client.patch(
        f"/v1/agents/{agent_id}/status", json={"status": "active"}, headers=auth()
    )
    assert started.status_code == 200, started.text
    later = await world.client.post("/v1/agents", json=body, headers=keyed("create-1"))
    assert (later.status_code, later.json()["agent_id"]) == (201, agent_id)
    assert later.headers["etag"] == '"2"'
    assert await agent_ids(world.client) == [agent_id]
    history = await world.client.get(f"/v1/agents/{agent_id}/history", headers=auth())
    assert [e["type"] for e in history.json()["events"]] == ["registered", "status_changed"]


async def test_concurrent_first_requests_with_one_key_create_one_agent(world: World) -> None:
    body = {"name": "Raced", "template_id": "simple-test"}
    replies = await asyncio.gather(
        *(world.client.post("/v1/agents", json=body, headers=keyed("race")) for _ in range(4))
    )
    assert [r.status_code for r in replies] == [201] * 4, [r.text for r in replies]
    assert len({r.json()["agent_id"] for r in replies}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in replies) == 1
    assert len(await agent_ids(world.client)) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"system_prompt": "Be verbose."},
        {"name": "Another name"},
        {"status": "active"},  # another initial status
        {"metadata": {"n": True}},  # true is not 1
        {"toolsets": ["custom"]},
    ],
)
async def test_the_key_sent_with_another_body_is_refused_and_changes_nothing(
    world: World, change: dict[str, Any]
) -> None:
    body = {
        "name": "Original",
        "template_id": "simple-test",
        "system_prompt": "Be brief.",
        "conversation_config": {"temperature": 1},
        "metadata": {"n": 1},
    }
    first = await world.client.post("/v1/agents", json=body, headers=keyed("reused"))
    assert first.status_code == 201, first.text
    agent_id = first.json()["agent_id"]

    other = await world.client.post("/v1/agents", json={**body, **change}, headers=keyed("reused"))
    assert other.status_code == 422, other.text
    error = other.json()
    assert set(error) == ERROR_KEYS
    assert code_of(error) == "VALIDATION_ERROR"
    assert error["details"]["reason"] == "IDEMPOTENCY_KEY_REUSED"
    assert error["details"]["agent_id"] == agent_id
    assert [f["field"] for f in error["details"]["fields"]] == ["header.idempotency-key"]
    assert "another request" in error["message"]
    agent = await world.client.get(f"/v1/agents/{agent_id}", headers=auth())
    assert (agent.json()["name"], agent.headers["etag"]) == ("Original", '"1"')
    assert await agent_ids(world.client) == [agent_id]


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", b"caf\xe9"])
async def test_a_bad_idempotency_key_is_a_400_naming_the_header(
    world: World, key: str | bytes
) -> None:
    body = {"name": "Never", "template_id": "simple-test"}
    reply = await world.client.post("/v1/agents", json=body, headers=keyed(key))
    assert reply.status_code == 400, reply.text
    assert code_of(reply.json()) == "VALIDATION_ERROR"
    assert [f["field"] for f in reply.json()["details"]["fields"]] == ["header.idempotency-key"]
    assert await agent_ids(world.client) == []
    longest = await world.client.post("/v1/agents", json=body, headers=keyed("~" * 255))
    assert longest.status_code == 201, longest.text


async def test_without_a_key_every_create_is_a_new_agent_as_before(world: World) -> None:
    made = []
    for name in ("Plain one", "Plain two"):
        reply = await world.client.post(
            "/v1/agents", json={"name": name, "template_id": "simple-test"}, headers=auth()
        )
        assert reply.status_code == 201, reply.text
        assert "idempotent-replayed" not in reply.headers
        made.append(reply.json()["agent_id"])
    assert made[0] != made[1]
    assert all(str(uuid.UUID(a)) == a for a in made)
    again = await world.client.post(
        "/v1/agents", json={"name": "Plain one", "template_id": "simple-test"}, headers=auth()
    )
    assert (again.status_code, code_of(again.json())) == (409, "CONFLICT")


async def test_a_chosen_id_with_a_key_is_kept_and_retried_safely(world: World) -> None:
    body = {"id": "chosen-1", "name": "Chosen keyed", "template_id": "simple-test"}
    first = await world.client.post("/v1/agents", json=body, headers=keyed("k"))
    assert (first.status_code, first.json()["agent_id"]) == (201, "chosen-1")
    again = await world.client.post("/v1/agents", json=body, headers=keyed("k"))
    assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
    # Without the key, the taken id is the conflict it always was.
    plain = await world.client.post("/v1/agents", json=body, headers=auth())
    assert (plain.status_code, code_of(plain.json())) == (409, "CONFLICT")


async def test_a_deleted_agent_frees_its_key(world: World) -> None:
    body = {"name": "Phoenix", "template_id": "simple-test"}
    first = await world.client.post("/v1/agents", json=body, headers=keyed("rise"))
    agent_id = first.json()["agent_id"]
    deleted = await world.client.delete(f"/v1/agents/{agent_id}", headers=auth())
    assert deleted.status_code == 200
    # The key creates the agent again: the same id, a new lifecycle (version 3).
    reborn = await world.client.post("/v1/agents", json=body, headers=keyed("rise"))
    assert reborn.status_code == 201, reborn.text
    assert "idempotent-replayed" not in reborn.headers
    assert (reborn.json()["agent_id"], reborn.headers["etag"]) == (agent_id, '"3"')
    # ... and a retry of that create is told from another request by its registration.
    retried = await world.client.post("/v1/agents", json=body, headers=keyed("rise"))
    assert (retried.status_code, retried.headers["idempotent-replayed"]) == (201, "true")
    other = await world.client.post(
        "/v1/agents", json={**body, "description": "changed"}, headers=keyed("rise")
    )
    assert other.status_code == 422, other.text


async def test_each_caller_has_its_own_keys_and_a_replay_is_audited(
    make_stack: MakeStack, nats_server: Any, nats_prefix: str
) -> None:
    keys, entries = keyring(ops=("admin", None), acme=("admin", "acme"))
    stack = await make_stack(api_keys=entries)
    await stack.agent(name="warm-up")  # once the registry knows the executor's templates
    callers = {"runtime-token": auth(), "key:ops": bearer(keys["ops"])}
    callers["key:acme"] = bearer(keys["acme"])
    ids = {}
    for principal, headers in callers.items():
        body = {"name": f"Agent of {principal}", "template_id": "simple-test"}
        reply = await stack.client.post("/v1/agents", json=body, headers=keyed("shared", headers))
        assert reply.status_code == 201, reply.text
        assert "idempotent-replayed" not in reply.headers
        ids[principal] = reply.json()["agent_id"]
    assert len(set(ids.values())) == 3  # the same key, three callers, three agents
    assert set(ids.values()) <= set(await agent_ids(stack.client))
    mine = await stack.client.get(f"/v1/agents/{ids['key:acme']}", headers=callers["key:acme"])
    assert mine.status_code == 200  # made for the key's owner
    # A chosen id another caller registered with the same key and body is not a replay.
    chosen = {"id": "chosen-by-ops", "name": "Chosen by ops", "template_id": "simple-test"}
    made = await stack.client.post(
        "/v1/agents", json=chosen, headers=keyed("chosen", callers["key:ops"])
    )
    assert made.status_code == 201, made.text
    taken = await stack.client.post(
        "/v1/agents", json=chosen, headers=keyed("chosen", callers["runtime-token"])
    )
    assert (taken.status_code, code_of(taken.json())) == (409, "CONFLICT")

    body = {"name": "Agent of key:ops", "template_id": "simple-test"}
    replayed = await stack.client.post(
        "/v1/agents", json=body, headers=keyed("shared", callers["key:ops"])
    )
    assert (replayed.status_code, replayed.json()["agent_id"]) == (201, ids["key:ops"])
    assert replayed.headers["idempotent-replayed"] == "true"
    stream = Names(nats_prefix).stream("audit")
    wanted = replayed.headers["x-request-id"]

    async def record() -> Any:
        found = records_of(await wait_for_records(nats_server.url, stream, 4, timeout=0.2))
        return next((r for r in found if r.request_id == wanted), None)

    audited = await eventually(record)
    assert (audited.action, audited.outcome, audited.principal_id) == (
        "agent.create",
        "succeeded",
        "key:ops",
    )
    assert audited.agent_id == ids["key:ops"]
    assert "replayed" in audited.detail
