"""Who may do what: API keys, roles, owners, rate limits, stream slots — and the audit trail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from executor_support import offline, services_config
from gateway_support import ERROR_KEYS, TOKEN, Stack, auth, code_of, keyring, running_gateway

from agentrt_kit.nats import Names
from agentrt_testkit.audit import records_of, wait_for_records

MakeStack = Callable[..., Awaitable[Stack]]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


KEYS, ENTRIES = keyring(
    admin=("admin", None),
    operator=("operator", None),
    viewer=("viewer", None),
    acme=("admin", "acme"),
    acme_ops=("operator", "acme"),
    globex=("admin", "globex"),
)


@pytest.fixture
async def keyed(make_stack: MakeStack) -> Stack:
    return await make_stack(api_keys=ENTRIES)


def chat(agent_id: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": agent_id, "messages": [{"role": "user", "content": text}], **extra}


async def test_keys_authenticate_with_their_role_and_owner(keyed: Stack) -> None:
    for name, role, owner in (("viewer", "viewer", None), ("acme", "admin", "acme")):
        reply = await keyed.client.get("/v1/whoami", headers=bearer(KEYS[name]))
        assert reply.json() == {"id": f"key:{name}", "role": role, "owner": owner}
    wrong = await keyed.client.get("/v1/whoami", headers=bearer(KEYS["viewer"] + "x"))
    assert wrong.status_code == 401
    assert set(wrong.json()) == ERROR_KEYS


READS = [
    ("GET", "/v1/agents", None),
    ("GET", "/v1/templates", None),
    ("GET", "/v1/schema", None),
    ("GET", "/v1/health", None),
    ("GET", "/v1/whoami", None),
]


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "allowed"),
    [
        *[(r, m, p, b, True) for r in ("viewer", "operator", "admin") for m, p, b in READS],
        ("viewer", "POST", "/v1/chat/completions", "chat", False),
        ("operator", "POST", "/v1/chat/completions", "chat", True),
        ("viewer", "POST", "/v1/agents/compose", "compose", False),
        ("operator", "POST", "/v1/agents/compose", "compose", True),
        ("viewer", "POST", "/v1/agents", "create", False),
        ("operator", "POST", "/v1/agents", "create", False),
        ("admin", "POST", "/v1/agents", "create", True),
        ("operator", "PUT", "/v1/agents/{id}", "update", False),
        ("admin", "PUT", "/v1/agents/{id}", "update", True),
        ("operator", "PATCH", "/v1/agents/{id}/status", "status", False),
        ("admin", "PATCH", "/v1/agents/{id}/status", "status", True),
        ("viewer", "DELETE", "/v1/agents/{id}", None, False),
        ("operator", "DELETE", "/v1/agents/{id}", None, False),
        ("admin", "DELETE", "/v1/agents/{id}", None, True),
        ("viewer", "GET", "/v1/agents/{id}", None, True),
        ("operator", "GET", "/v1/queues", None, False),
        ("admin", "GET", "/v1/queues", None, True),
        ("viewer", "GET", "/v1/agents/{id}/history", None, True),
    ],
)
async def test_each_route_needs_its_role(
    keyed: Stack, role: str, method: str, path: str, body: str | None, allowed: bool
) -> None:
    agent_id = await keyed.agent(name=f"target-{role}-{method}")
    bodies: dict[str, Any] = {
        "chat": chat(agent_id),
        "compose": {"template_id": "simple-test", "instructions": "Answer politely."},
        "create": {"name": f"new-{role}", "template_id": "simple-test"},
        "update": {"description": "changed"},
        "status": {"status": "inactive"},
    }
    reply = await keyed.client.request(
        method,
        path.format(id=agent_id),
        json=bodies[body] if body else None,
        headers=bearer(KEYS[role]),
    )
    if allowed:
        assert reply.status_code < 300, reply.text
    else:
        assert reply.status_code == 403, reply.text
        assert code_of(reply.json()) == "FORBIDDEN"
        assert set(reply.json()) == ERROR_KEYS
    no_token = await keyed.client.request(
        method, path.format(id=agent_id), json=bodies[body] if body else None
    )
    assert no_token.status_code == 401


async def test_an_owner_sees_and_touches_only_its_own_agents(keyed: Stack) -> None:
    acme = bearer(KEYS["acme"])
    created = await keyed.client.post(
        "/v1/agents", json={"name": "acme bot", "template_id": "simple-test"}, headers=acme
    )
    assert created.status_code == 201, created.text
    mine = created.json()["agent_id"]
    await keyed.client.patch(f"/v1/agents/{mine}/status", json={"status": "active"}, headers=acme)
    theirs = await keyed.agent(name="globex bot", owner_id="globex")
    unowned = await keyed.agent(name="house bot")

    listed = await keyed.client.get("/v1/agents", headers=acme)
    assert [a["id"] for a in listed.json()] == [mine]
    everything = await keyed.client.get("/v1/agents", headers=bearer(KEYS["admin"]))
    assert {mine, theirs, unowned} <= {a["id"] for a in everything.json()}

    for other in (theirs, unowned):
        for method, path, body in (
            ("GET", f"/v1/agents/{other}", None),
            ("GET", f"/v1/agents/{other}/history", None),
            ("PUT", f"/v1/agents/{other}", {"description": "mine now"}),
            ("PATCH", f"/v1/agents/{other}/status", {"status": "inactive"}),
            ("DELETE", f"/v1/agents/{other}", None),
            ("POST", "/v1/chat/completions", chat(other)),
        ):
            reply = await keyed.client.request(method, path, json=body, headers=acme)
            assert reply.status_code == 404, (method, path, reply.text)
            assert code_of(reply.json()) == "AGENT_NOT_FOUND"
    missing = await keyed.client.get("/v1/agents/no-such-agent", headers=acme)
    hidden = await keyed.client.get(f"/v1/agents/{theirs}", headers=acme)
    assert hidden.json()["message"].replace(theirs, "X") == missing.json()["message"].replace(
        "no-such-agent", "X"
    )

    ops = bearer(KEYS["acme_ops"])
    ran = await keyed.client.post("/v1/chat/completions", json=chat(mine), headers=ops)
    assert ran.status_code == 200, ran.text
    got = await keyed.client.get(f"/v1/agents/{mine}", headers=ops)
    assert got.status_code == 200
    still = await keyed.client.get(f"/v1/agents/{theirs}", headers=bearer(KEYS["admin"]))
    assert still.status_code == 200


async def test_an_owner_key_cannot_create_or_move_agents_to_another_owner(keyed: Stack) -> None:
    acme = bearer(KEYS["acme"])
    refused = await keyed.client.post(
        "/v1/agents",
        json={"name": "smuggled", "template_id": "simple-test", "owner_id": "globex"},
        headers=acme,
    )
    assert refused.status_code == 403
    assert refused.json()["details"]["fields"][0]["field"] == "body.owner_id"
    own = await keyed.client.post(
        "/v1/agents",
        json={"name": "explicit", "template_id": "simple-test", "owner_id": "acme"},
        headers=acme,
    )
    assert own.status_code == 201
    agent_id = own.json()["agent_id"]
    moved = await keyed.client.put(
        f"/v1/agents/{agent_id}", json={"owner_id": "globex"}, headers=acme
    )
    assert moved.status_code == 403
    globex_view = await keyed.client.get(f"/v1/agents/{agent_id}", headers=bearer(KEYS["globex"]))
    assert globex_view.status_code == 404


async def test_keys_can_come_from_a_file(make_stack: MakeStack, tmp_path: Any) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(ENTRIES[:1]))
    stack = await make_stack(api_keys_file=str(path))
    reply = await stack.client.get("/v1/whoami", headers=bearer(KEYS["admin"]))
    assert reply.json()["id"] == "key:admin"


async def test_the_key_rate_limit_answers_429_with_retry_after(make_stack: MakeStack) -> None:
    stack = await make_stack(api_keys=ENTRIES, rate_limit_per_second=0.5, rate_limit_burst=3)
    headers = bearer(KEYS["viewer"])
    replies = [await stack.client.get("/v1/whoami", headers=headers) for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in replies] == ["2", "1", "0", "0"]
    assert all(r.headers["X-RateLimit-Limit"] == "3" for r in replies)
    refused = replies[-1]
    assert code_of(refused.json()) == "RATE_LIMIT_EXCEEDED"
    assert set(refused.json()) == ERROR_KEYS
    assert refused.headers["Retry-After"] == "2"
    other_key = await stack.client.get("/v1/whoami", headers=bearer(KEYS["admin"]))
    assert other_key.status_code == 200  # buckets are per key


async def test_the_address_rate_limit_counts_bad_tokens_too(make_stack: MakeStack) -> None:
    stack = await make_stack(address_rate_limit_per_second=0.1, address_rate_limit_burst=2)
    first = await stack.client.get("/v1/whoami", headers=auth("wrong"))
    second = await stack.client.get("/v1/whoami", headers=auth("wrong"))
    third = await stack.client.get("/v1/whoami", headers=auth())
    assert [first.status_code, second.status_code, third.status_code] == [401, 401, 429]
    assert int(third.headers["Retry-After"]) >= 1
    assert (await stack.client.get("/ping")).status_code == 200  # open routes are not counted


@pytest.mark.parametrize(("trusted", "statuses"), [("", [200, 429]), ("127.0.0.1", [200, 200])])
async def test_the_client_address_comes_from_a_trusted_proxy_only(
    make_stack: MakeStack, trusted: str, statuses: list[int]
) -> None:
    stack = await make_stack(
        address_rate_limit_per_second=0.1,
        address_rate_limit_burst=1,
        forwarded_allow_ips=trusted,
    )
    found = [
        (
            await stack.client.get(
                "/v1/whoami", headers={**auth(), "X-Forwarded-For": f"203.0.113.{n}"}
            )
        ).status_code
        for n in (1, 2)
    ]
    assert found == statuses  # trusted: two clients, two buckets; else one peer, one bucket


async def test_streams_per_key_are_bounded(make_stack: MakeStack) -> None:
    slow = services_config(slow=offline(latency_ms=1500))
    stack = await make_stack({"services_config": slow}, max_streams_per_key=1)
    agent_id = await stack.agent(name="slow stream", llm_config_id="slow")
    body = chat(agent_id, stream=True)
    async with stack.client.stream(
        "POST", "/v1/chat/completions", json=body, headers=auth()
    ) as first:
        assert first.status_code == 200
        second = await stack.client.post("/v1/chat/completions", json=body, headers=auth())
        assert second.status_code == 429
        assert second.json()["details"]["scope"] == "streams"
        assert second.headers["Retry-After"] == "1"
        await first.aread()
    third = await stack.client.post("/v1/chat/completions", json=body, headers=auth())
    assert third.status_code == 200  # the slot came back when the first stream ended


async def test_compose_drafts_an_agent_and_creates_nothing(stack: Stack) -> None:
    before = (await stack.client.get("/v1/agents", headers=auth())).json()
    reply = await stack.client.post(
        "/v1/agents/compose/",
        json={
            "template_id": "simple-test",
            "instructions": "Greets visitors of the museum. Answers in one line.",
            "suggested_name": "Museum greeter",
            "suggested_tools": ["read_lines"],
        },
        headers=auth(),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    draft = body["draft"]
    assert draft["name"] == "Museum greeter"
    assert draft["template_id"] == "simple-test"
    assert draft["system_prompt"].startswith("Greets visitors")
    assert draft["toolsets"] == ["read_lines"]
    assert body["validation_results"]["valid"] is True
    assert body["validation_results"]["warnings"]  # the offline model wrote no JSON draft
    assert body["usage"]["total_tokens"] > 0
    assert (await stack.client.get("/v1/agents", headers=auth())).json() == before
    created = await stack.client.post("/v1/agents", json=draft, headers=auth())
    assert created.status_code == 201, created.text  # the draft is create-shaped


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"template_id": "simple-test"}, 422, "body.instructions"),
        ({"template_id": "simple-test", "instructions": ""}, 422, "body.instructions"),
        ({"instructions": "x"}, 422, "body.template_id"),
        (
            {"template_id": "simple-test", "instructions": "x", "llm_config_id": "nope"},
            400,
            "llm_config_id",
        ),
        ({"template_id": "no-such-template", "instructions": "x"}, 404, None),
    ],
)
async def test_compose_refuses_bad_input_naming_the_field(
    stack: Stack, body: dict[str, Any], status: int, field: str | None
) -> None:
    reply = await stack.client.post("/v1/agents/compose", json=body, headers=auth())
    assert reply.status_code == status, reply.text
    error = reply.json()
    assert set(error) == ERROR_KEYS
    if field is not None:
        assert any(f["field"] == field for f in error["details"]["fields"]), error
    else:
        assert code_of(error) == "TEMPLATE_NOT_FOUND"


async def test_schema_answers_and_refuses_another_major_version(stack: Stack) -> None:
    reply = await stack.client.get("/v1/schema/", headers=auth())
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {
        "version",
        "lastUpdated",
        "supportedAgentTemplates",
        "capabilities",
        "limits",
    }
    assert "simple-test" in [t["id"] for t in body["supportedAgentTemplates"]]
    assert body["capabilities"]["streaming"] is True
    assert body["limits"]["maxMessageLength"] == 32_000
    for compatible in ("1", "1.0", "v1.0.0"):
        ok = await stack.client.get(
            "/v1/schema", headers={**auth(), "X-Schema-Version": compatible}
        )
        assert ok.status_code == 200, compatible
    for other in ("2.0", "0.9", "1.5"):
        refused = await stack.client.get(
            "/v1/schema", headers={**auth(), "X-Schema-Version": other}
        )
        assert refused.status_code == 409, other
        assert code_of(refused.json()) == "VERSION_MISMATCH"
        assert set(refused.json()) == ERROR_KEYS
    garbage = await stack.client.get("/v1/schema", headers={**auth(), "X-Schema-Version": "latest"})
    assert garbage.status_code == 400


async def test_every_mutating_request_and_execution_is_audited_once(
    keyed: Stack, nats_server: Any, nats_prefix: str
) -> None:
    agent_id = await keyed.agent(name="audited")
    client = keyed.client
    admin, viewer = bearer(KEYS["admin"]), bearer(KEYS["viewer"])
    calls: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/v1/agents", admin, {"name": "audit-created", "template_id": "simple-test"}),
        ("PUT", f"/v1/agents/{agent_id}", admin, {"description": "audited change"}),
        ("PUT", f"/v1/agents/{agent_id}", viewer, {"description": "refused change"}),
        ("PATCH", f"/v1/agents/{agent_id}/status", {}, {"status": "inactive"}),
        ("POST", "/v1/chat/completions", admin, chat("no-such-agent")),
        ("POST", "/v1/chat/completions", admin, chat(agent_id, "audit me")),
        ("POST", "/v1/chat/completions", admin, chat(agent_id, "stream me", stream=True)),
        ("DELETE", "/v1/agents/no-such-agent", admin, None),
        ("GET", f"/v1/agents/{agent_id}", admin, None),  # a read: not audited
    ]
    request_ids = []
    for method, path, headers, body in calls:
        reply = await client.request(method, path, json=body, headers=headers)
        request_ids.append(reply.headers["x-request-id"])
    oversized = await client.post(
        "/v1/agents", content=b"{" + b" " * (1024 * 1024 + 1) + b"}", headers=admin
    )
    assert oversized.status_code == 413
    expected = len(calls)  # 8 audited + the 413, one per request
    stream = Names(nats_prefix).stream("audit")
    records = [
        r
        for r in records_of(await wait_for_records(nats_server.url, stream, expected))
        if r.service == "gateway"
    ]
    await asyncio.sleep(0.3)
    records = [
        r
        for r in records_of(await wait_for_records(nats_server.url, stream, expected, timeout=0.2))
        if r.service == "gateway"
    ]
    by_request = {r.request_id: r for r in records}
    assert len(records) == len(by_request) == expected
    seen = [
        (by_request[rid].action, by_request[rid].outcome, by_request[rid].principal_id)
        for rid in request_ids[:-1]
    ]
    assert seen == [
        ("agent.create", "succeeded", "key:admin"),
        ("agent.update", "succeeded", "key:admin"),
        ("agent.update", "denied", "key:viewer"),
        ("agent.status", "denied", "anonymous"),
        ("chat.completion", "failed", "key:admin"),
        ("chat.completion", "succeeded", "key:admin"),
        ("chat.completion", "succeeded", "key:admin"),
        ("agent.delete", "failed", "key:admin"),
    ]
    assert request_ids[-1] not in by_request
    ran = by_request[request_ids[5]]
    assert ran.agent_id == agent_id
    assert ran.run_id
    assert ran.task_id
    streamed = by_request[request_ids[6]]
    assert streamed.run_id
    assert streamed.run_id != ran.run_id
    assert by_request[request_ids[0]].agent_id  # the new agent's id
    # A refused or failed request's record says why, not only the status.
    assert by_request[request_ids[2]].detail.startswith("403 FORBIDDEN: this needs the admin")
    assert by_request[request_ids[3]].detail.startswith("401 INVALID_TOKEN")
    assert by_request[request_ids[4]].detail.startswith("404 AGENT_NOT_FOUND")
    too_big = [r for r in records if r.detail.startswith("413 REQUEST_TOO_LARGE: ")]
    assert len(too_big) == 1
    assert too_big[0].outcome == "failed"
    for record in records:
        assert KEYS["admin"] not in str(record)
        assert TOKEN not in str(record)


async def test_a_request_id_is_echoed_or_made(stack: Stack) -> None:
    given = await stack.client.get("/ping", headers={"X-Request-ID": "req-123"})
    assert given.headers["x-request-id"] == "req-123"
    unsafe = await stack.client.get("/ping", headers={"X-Request-ID": "bad id\twith tab"})
    assert unsafe.headers["x-request-id"] != "bad id\twith tab"
    assert len(unsafe.headers["x-request-id"]) == 32


@pytest.fixture
async def viewer_only(nats_server: Any, nats_prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(
        nats_url=nats_server.url, nats_prefix=nats_prefix, runtime_token=None, api_keys=ENTRIES[2:3]
    ) as client:
        yield client


async def test_a_gateway_may_run_on_keys_alone(viewer_only: httpx.AsyncClient) -> None:
    reply = await viewer_only.get("/v1/whoami", headers=bearer(KEYS["viewer"]))
    assert reply.json()["role"] == "viewer"
    assert (await viewer_only.get("/v1/whoami", headers=auth())).status_code == 401
