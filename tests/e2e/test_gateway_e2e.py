"""End to end: the gateway as a process in front of registry, tools and executor processes.

Driven the way users drive it: httpx against the compatible HTTP surface (COMPAT.md), the
official `openai` package, and a client that makes the old SDK's calls. Covers roles,
owners, rate limits, the audit trail and SIGTERM. The services and two gateways (one with
generous limits, one with a tiny per-key rate) start once for the module.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import openai
import pytest
from gateway_support import (
    AGENT_KEYS,
    CONFIGURATION_KEYS,
    ERROR_KEYS,
    TEMPLATE_KEYS,
    code_of,
    frames,
    keyring,
)
from openai import AsyncOpenAI, OpenAI

from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt_kit.nats import Names
from agentrt_testkit.audit import records_of, wait_for_records
from agentrt_testkit.processes import ServiceProcess

pytestmark = pytest.mark.e2e

TOKEN = "rt-" + secrets.token_urlsafe(24)


KEYS, ENTRIES = keyring(
    admin=("admin", None),
    operator=("operator", None),
    viewer=("viewer", None),
    acme=("admin", "acme"),
    globex=("admin", "globex"),
)
LIMITED_KEYS, LIMITED_ENTRIES = keyring(limited=("operator", None), sdk=("operator", None))
LIMITED_BURST = 3
SECRETS = [TOKEN, *KEYS.values(), *LIMITED_KEYS.values()]


def token(name: str) -> dict[str, str]:
    """Headers presenting a key (as a Bearer key) or, for "runtime", the runtime token."""
    if name == "runtime":
        return {"X-Runtime-Token": TOKEN}
    return {"Authorization": f"Bearer {KEYS.get(name) or LIMITED_KEYS[name]}"}


RT = token("runtime")


@dataclass(frozen=True)
class Gateways:
    """The gateway processes of this module."""

    main: ServiceProcess  # limits far above what the tests send
    limited: ServiceProcess  # LIMITED_BURST requests per key, then 429 for a long while


@pytest.fixture(scope="module")
def gateways(backend: Any) -> Gateways:
    generous = {
        "rate_limit_per_second": "1000",
        "rate_limit_burst": "5000",
        "address_rate_limit_per_second": "1000",
        "address_rate_limit_burst": "5000",
    }
    main = backend.gateway(TOKEN, ENTRIES, **generous)
    limited = backend.gateway(
        TOKEN,
        LIMITED_ENTRIES,
        rate_limit_per_second="0.02",
        rate_limit_burst=str(LIMITED_BURST),
    )
    backend.start(main, limited)
    # The registry validates templates against the catalogue the executor publishes: wait
    # until it has seen it, so that the first create of a test does not race it.
    deadline = time.monotonic() + 15
    while True:
        probe = httpx.post(
            f"{main.url}/v1/agents",
            json={"name": "warm-up", "template_id": "simple-test"},
            headers=RT,
        )
        if probe.status_code == 201 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert probe.status_code == 201, probe.text
    return Gateways(main, limited)


@pytest.fixture
def http(gateways: Gateways) -> Iterator[httpx.Client]:
    """An HTTP client of the main gateway; no credentials unless a request adds them."""
    with httpx.Client(base_url=gateways.main.url, follow_redirects=False, timeout=20) as client:
        yield client


def create(http: httpx.Client, headers: dict[str, str] | None = None, **fields: Any) -> str:
    """A new simple-test agent (created by the runtime token unless told); its id."""
    fields.setdefault("name", f"agent-{uuid.uuid4().hex[:12]}")
    fields.setdefault("template_id", "simple-test")
    reply = http.post("/v1/agents", json=fields, headers=headers or RT)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["agent_id"])


def chat(agent_id: str, text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": agent_id, "messages": [{"role": "user", "content": text}], **extra}


def assert_error(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The reply is the COMPAT error body with this status and code; the body."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body: dict[str, Any] = reply.json()
    assert set(body) == ERROR_KEYS, body
    assert code_of(body) == code, body
    assert body["detail"] == body["message"]
    assert isinstance(body["details"], dict)
    return body


def assert_agent_body(body: Any) -> None:
    """Exactly COMPAT's agent keys, nested ones included."""
    assert set(body) == AGENT_KEYS, body
    assert set(body["configuration"]) == CONFIGURATION_KEYS, body


# --- every route: path forms, roles, tokens -----------------------------------------------

Body = Callable[[str], Any]


@dataclass(frozen=True)
class Route:
    """A `/v1` route: what it needs, how to call it and what a success is."""

    method: str
    path: str  # `{id}`: an agent made for the call
    role: str  # the lowest role allowed
    body: Body | None = None
    ok: int = 200
    mutates: bool = False  # needs an agent of its own for each successful call
    label: str = ""

    def __str__(self) -> str:
        return " ".join(filter(None, (self.method, self.path, self.label)))


ROUTES = [
    Route("GET", "/v1/health", "viewer"),
    Route("GET", "/v1/schema", "viewer"),
    Route("GET", "/v1/whoami", "viewer"),
    Route("GET", "/v1/templates", "viewer"),
    Route("GET", "/v1/templates/simple-test", "viewer"),
    Route("GET", "/v1/agents", "viewer"),
    Route("GET", "/v1/agents/{id}", "viewer"),
    Route("GET", "/v1/agents/{id}/history", "viewer"),
    Route("POST", "/v1/chat/completions", "operator", chat),
    Route("POST", "/v1/chat/completions", "operator", lambda a: chat(a, stream=True), label="SSE"),
    Route(
        "POST",
        "/v1/agents/compose",
        "operator",
        lambda a: {"template_id": "simple-test", "instructions": "Greet people."},
    ),
    Route(
        "POST",
        "/v1/agents",
        "admin",
        lambda a: {"name": f"made-{uuid.uuid4().hex[:12]}", "template_id": "simple-test"},
        ok=201,
    ),
    Route("PUT", "/v1/agents/{id}", "admin", lambda a: {"description": "new"}, mutates=True),
    Route("PATCH", "/v1/agents/{id}/status", "admin", lambda a: {"status": "active"}, mutates=True),
    Route("DELETE", "/v1/agents/{id}", "admin", mutates=True),
]
ROLE_ORDER = ("viewer", "operator", "admin")


def call(
    http: httpx.Client, route: Route, agent_id: str, headers: dict[str, str], slash: bool = False
) -> httpx.Response:
    path = route.path.format(id=agent_id) + ("/" if slash else "")
    body = route.body(agent_id) if route.body else None
    return http.request(route.method, path, json=body, headers=headers)


def test_open_routes_answer_without_a_token(http: httpx.Client) -> None:
    root = http.get("/")
    assert root.status_code == 200
    assert set(root.json()) == {"name", "version", "docs"}
    for slash in ("", "/"):
        ping = http.get("/ping" + slash)
        assert ping.status_code == 200
        assert ping.json() == {"status": "ok", "message": "pong"}
        assert http.get("/healthz" + slash).json() == {"status": "ok"}
        ready = http.get("/readyz" + slash)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"registry": "ok", "executor": "ok"}}
        metrics = http.get("/metrics" + slash)
        assert metrics.status_code == 200
        assert "agentrt_gateway_requests_total" in metrics.text
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/agents", "/v1/agents/{agent_id}", "/v1/chat/completions"} <= set(paths)
    assert_error(http.get("/nowhere"), 404, "NOT_FOUND")
    assert_error(http.get("/v1/nowhere"), 401, "INVALID_TOKEN")  # only token holders learn
    assert_error(http.get("/v1/nowhere", headers=RT), 404, "NOT_FOUND")
    assert_error(http.post("/v1/health", headers=RT), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_route_answers_with_and_without_a_trailing_slash(
    http: httpx.Client, route: Route
) -> None:
    shared = create(http)
    for slash in (False, True):
        agent_id = create(http) if route.mutates else shared
        reply = call(http, route, agent_id, RT, slash)
        assert reply.status_code == route.ok, (slash, reply.text)
        assert not reply.history  # answered, never redirected
        if reply.headers["content-type"].startswith("text/event-stream"):
            assert frames(reply.text)[-1] == "[DONE]"
        else:
            assert "error" not in reply.json()


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_route_needs_a_token_and_its_role(http: httpx.Client, route: Route) -> None:
    target = create(http)
    for slash in (False, True):
        for headers in ({}, {"X-Runtime-Token": TOKEN + "x"}, {"Authorization": "Bearer nope"}):
            refused = call(http, route, target, headers, slash)
            assert_error(refused, 401, "INVALID_TOKEN")
            assert refused.headers["www-authenticate"] == "Bearer"
    for role in ROLE_ORDER:
        allowed = ROLE_ORDER.index(role) >= ROLE_ORDER.index(route.role)
        agent_id = create(http) if allowed and route.mutates else target
        reply = call(http, route, agent_id, token(role))
        if allowed:
            assert reply.status_code == route.ok, (role, reply.text)
        else:
            body = assert_error(reply, 403, "FORBIDDEN")
            details = {k: v for k, v in body["details"].items() if k != "code"}
            assert details == {"required_role": route.role, "role": role}  # OpenAI's add `code`
    untouched = http.get(f"/v1/agents/{target}", headers=RT)
    assert untouched.headers["etag"] == '"1"'  # no refused call changed it


def test_whoami_names_each_principal_never_its_token(http: httpx.Client) -> None:
    expected = {
        "runtime": {"id": "runtime-token", "role": "admin", "owner": None},
        "viewer": {"id": "key:viewer", "role": "viewer", "owner": None},
        "operator": {"id": "key:operator", "role": "operator", "owner": None},
        "acme": {"id": "key:acme", "role": "admin", "owner": "acme"},
    }
    for name, who in expected.items():
        reply = http.get("/v1/whoami", headers=token(name))
        assert reply.json() == who
    bearer_runtime = http.get("/v1/whoami", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer_runtime.json()["id"] == "runtime-token"


# --- the compatible surface, with httpx -----------------------------------------------------


def test_health_reports_every_dependency_and_the_execution_numbers(http: httpx.Client) -> None:
    # The executor publishes its tools service's sandbox once it has asked it (it asks
    # again every 5 s while the tools service is still starting).
    deadline = time.monotonic() + 15
    while True:
        reply = http.get("/v1/health", headers=RT)
        assert reply.status_code == 200
        body = reply.json()
        if (body.get("sandbox") or {}).get("available") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(body) == {
        "status",
        "timestamp",
        "version",
        "uptime_seconds",
        "checks",
        "metrics",
        "queue",
        "sandbox",
    }
    assert body["status"] == "healthy"
    # The tools service of this system runs code in bubblewrap; the executor publishes it.
    assert body["sandbox"]["available"] is True, body["sandbox"]
    assert body["sandbox"]["isolation"] == "bubblewrap"
    assert body["queue"]["status"] == "ok"
    assert body["queue"]["backend"] == "nats"
    assert set(body["checks"]) == {"registry", "executor", "nats"}
    for check in body["checks"].values():
        assert check["status"] == "ok"
        assert check["response_time_ms"] >= 0
    assert set(body["metrics"]) == {
        "active_agents",
        "total_executions",
        "average_response_time_ms",
        "error_rate",
    }


def test_health_counts_this_replicas_executions(http: httpx.Client) -> None:
    agent_id = create(http)
    before = http.get("/v1/health", headers=RT).json()["metrics"]
    assert http.post("/v1/chat/completions", json=chat(agent_id), headers=RT).status_code == 200
    streamed = http.post("/v1/chat/completions", json=chat(agent_id, stream=True), headers=RT)
    assert streamed.status_code == 200
    after = http.get("/v1/health/", headers=RT).json()["metrics"]
    assert after["total_executions"] == before["total_executions"] + 2
    assert after["average_response_time_ms"] > 0
    assert after["active_agents"] == 0  # nothing runs now


def test_schema_lists_templates_and_refuses_another_major_version(http: httpx.Client) -> None:
    body = http.get("/v1/schema/", headers=RT).json()
    assert set(body) == {
        "version",
        "lastUpdated",
        "supportedAgentTemplates",
        "capabilities",
        "limits",
    }
    assert {"simple-test", "langgraph-workflow"} <= {
        t["id"] for t in body["supportedAgentTemplates"]
    }
    capabilities = body["capabilities"]
    # codeExecutionReason only while no executor reports a sandbox (docs/HTTP.md).
    assert set(capabilities) == {
        "streaming",
        "toolCalling",
        "multimodal",
        "codeExecution",
        "codeExecutionIsolation",
    } | (set() if capabilities["codeExecution"] else {"codeExecutionReason"})
    assert set(body["limits"]) == {
        "maxConcurrentAgents",
        "maxMessageLength",
        "maxConversationHistory",
    }
    same = http.get("/v1/schema", headers={**RT, "X-Schema-Version": body["version"]})
    assert same.status_code == 200
    for path in ("/v1/schema", "/v1/schema/"):
        refused = http.get(path, headers={**RT, "X-Schema-Version": "2.0"})
        assert_error(refused, 409, "VERSION_MISMATCH")


def test_templates_have_exactly_the_compat_keys(http: httpx.Client) -> None:
    listed = http.get("/v1/templates", headers=RT).json()
    assert set(listed) == {"templates"}
    by_id = {t["id"]: t for t in listed["templates"]}
    assert {"simple-test", "langgraph-workflow"} <= set(by_id)
    for template in by_id.values():
        assert set(template) == TEMPLATE_KEYS
    assert {f["key"] for f in by_id["simple-test"]["config"]} >= {
        "response_prefix",
        "system_prompt",
    }
    one = http.get("/v1/templates/simple-test/", headers=RT)
    assert one.json() == by_id["simple-test"]
    framework = by_id["simple-test"]["framework"]
    filtered = http.get("/v1/templates/", params={"framework": framework}, headers=RT).json()
    assert filtered["templates"]
    assert {t["framework"] for t in filtered["templates"]} == {framework}
    nothing = http.get("/v1/templates", params={"framework": "no-such"}, headers=RT).json()
    assert nothing == {"templates": []}
    assert_error(http.get("/v1/templates/no-such", headers=RT), 404, "TEMPLATE_NOT_FOUND")


def test_an_agent_lives_through_create_read_update_status_history_and_delete(
    http: httpx.Client,
) -> None:
    name = f"lifecycle-{uuid.uuid4().hex[:8]}"
    created = http.post(
        "/v1/agents/",
        json={
            "name": name,
            "template_id": "simple-test",
            "system_prompt": "Be brief.",
            "template_config": {"response_prefix": "A: "},
            "conversation_config": {"temperature": 0.5, "max_tokens": 100},
        },
        headers={**RT, "X-Request-ID": "req-create-1"},
    )
    assert created.status_code == 201, created.text
    answer = created.json()
    assert set(answer) == {"success", "agent_id", "message", "validation_results"}
    assert answer["success"] is True
    assert set(answer["validation_results"]) == {"valid", "warnings"}
    agent_id = answer["agent_id"]
    assert created.headers["etag"] == '"1"'
    assert created.headers["location"] == f"/v1/agents/{agent_id}"

    read = http.get(f"/v1/agents/{agent_id}", headers=RT)
    assert read.headers["etag"] == '"1"'
    agent = read.json()
    assert_agent_body(agent)
    assert (agent["id"], agent["name"], agent["status"]) == (agent_id, name, "created")
    assert agent["configuration"]["system_prompt"] == "Be brief."
    assert agent["configuration"]["template_config"]["response_prefix"] == "A: "
    assert agent["configuration"]["conversation_config"] == {"temperature": 0.5, "max_tokens": 100}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", agent["created_at"])

    listed = http.get("/v1/agents", params={"template_id": "simple-test"}, headers=RT).json()
    assert isinstance(listed, list)
    assert agent in listed
    for item in listed:
        assert_agent_body(item)
    page = http.get("/v1/agents/", params={"limit": 1}, headers=RT).json()
    assert len(page) == 1

    # PUT in the `configuration{...}` shape, then in the create shape (top-level keys).
    nested = http.put(
        f"/v1/agents/{agent_id}",
        json={"name": name + "-2", "configuration": {"system_prompt": "Be kind."}},
        headers={**RT, "If-Match": '"1"'},
    )
    assert nested.status_code == 200, nested.text
    assert nested.headers["etag"] == '"2"'
    assert_agent_body(nested.json())
    assert nested.json()["name"] == name + "-2"
    assert nested.json()["configuration"]["system_prompt"] == "Be kind."
    flat = http.put(
        f"/v1/agents/{agent_id}/",
        json={
            "system_prompt": "Be calm.",
            "template_config": {"response_prefix": "B: "},
            "metadata": {"team": "e2e"},
        },
        headers=RT,
    )
    assert flat.status_code == 200, flat.text
    assert flat.headers["etag"] == '"3"'
    changed = flat.json()
    assert_agent_body(changed)
    assert changed["name"] == name + "-2"  # not given: kept
    assert changed["configuration"]["system_prompt"] == "Be calm."
    assert changed["configuration"]["template_config"]["response_prefix"] == "B: "
    assert changed["metadata"] == {"team": "e2e"}

    # A stale If-Match is refused everywhere and changes nothing; a malformed one is a 400.
    assert_error(
        http.put(
            f"/v1/agents/{agent_id}", json={"name": "stale"}, headers={**RT, "If-Match": '"1"'}
        ),
        412,
        "PRECONDITION_FAILED",
    )
    assert_error(
        http.patch(
            f"/v1/agents/{agent_id}/status",
            json={"status": "active"},
            headers={**RT, "If-Match": '"2"'},
        ),
        412,
        "PRECONDITION_FAILED",
    )
    assert_error(
        http.delete(f"/v1/agents/{agent_id}", headers={**RT, "If-Match": '"2"'}),
        412,
        "PRECONDITION_FAILED",
    )
    assert_error(
        http.put(f"/v1/agents/{agent_id}", json={}, headers={**RT, "If-Match": "3"}),
        400,
        "VALIDATION_ERROR",
    )
    assert http.get(f"/v1/agents/{agent_id}", headers=RT).headers["etag"] == '"3"'

    status = http.patch(
        f"/v1/agents/{agent_id}/status/",
        json={"status": "active"},
        headers={**RT, "If-Match": '"3"'},
    )
    assert status.status_code == 200, status.text
    assert status.headers["etag"] == '"4"'
    assert_agent_body(status.json())
    assert status.json()["status"] == "active"
    assert_error(
        http.patch(f"/v1/agents/{agent_id}/status", json={"status": "sleeping"}, headers=RT),
        422,
        "VALIDATION_ERROR",
    )
    active = http.get("/v1/agents", params={"active_only": "true", "limit": 1000}, headers=RT)
    assert agent_id in {a["id"] for a in active.json()}
    assert {a["status"] for a in active.json()} == {"active"}

    first = http.get(f"/v1/agents/{agent_id}", params={"version": 1}, headers=RT)
    assert first.status_code == 200
    assert first.headers["etag"] == '"1"'
    assert first.json() == agent
    assert_error(
        http.get(f"/v1/agents/{agent_id}/", params={"version": 99}, headers=RT),
        404,
        "AGENT_NOT_FOUND",
    )

    history = http.get(f"/v1/agents/{agent_id}/history", headers=RT).json()
    events = history["events"]
    assert [e["version"] for e in events] == [1, 2, 3, 4]
    assert events[0]["request_id"] == "req-create-1"  # the request id reached the registry
    assert {e["actor"] for e in events} == {"runtime-token"}
    assert (events[3]["from_status"], events[3]["to_status"]) == ("created", "active")
    paged = http.get(f"/v1/agents/{agent_id}/history/", params={"page_size": 2}, headers=RT)
    assert [e["version"] for e in paged.json()["events"]] == [1, 2]
    assert paged.json()["next_page_token"]

    deleted = http.delete(f"/v1/agents/{agent_id}/", headers={**RT, "If-Match": '"4"'})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"success": True, "agent_id": agent_id, "message": "Agent deleted"}
    assert_error(http.get(f"/v1/agents/{agent_id}", headers=RT), 404, "AGENT_NOT_FOUND")
    assert agent_id not in {a["id"] for a in http.get("/v1/agents", headers=RT).json()}


def test_create_refuses_bad_input_naming_the_field_and_a_taken_name(http: httpx.Client) -> None:
    name = f"taken-{uuid.uuid4().hex[:8]}"
    agent_id = create(http, name=name)
    taken = http.post("/v1/agents", json={"name": name, "template_id": "simple-test"}, headers=RT)
    assert_error(taken, 409, "CONFLICT")
    for body, field in (
        ({"name": "   ", "template_id": "simple-test"}, "body.name"),
        ({"name": "x" * 101, "template_id": "simple-test"}, "body.name"),
    ):
        refused = assert_error(
            http.post("/v1/agents", json=body, headers=RT), 422, "VALIDATION_ERROR"
        )
        assert field in {f["field"] for f in refused["details"]["fields"]}
    # What the registry refuses (the template's config schema, COMPAT's bounds) is a 400.
    invalid: list[tuple[dict[str, Any], str]] = [
        ({"template_config": {"nope": 1}}, "spec.template_config"),
        ({"template_id": "no-such-template"}, "spec.template_id"),
        ({"conversation_config": {"temperature": 2.5}}, "spec.conversation_config.temperature"),
        ({"conversation_config": {"max_tokens": 0}}, "spec.conversation_config.max_tokens"),
    ]
    for values, field in invalid:
        reply = http.post(
            "/v1/agents",
            json={"name": name + "-b", "template_id": "simple-test", **values},
            headers=RT,
        )
        details = assert_error(reply, 400, "VALIDATION_ERROR")["details"]
        assert field in {f["field"] for f in details["fields"]}, details
    renamed = http.put(f"/v1/agents/{agent_id}", json={"name": name}, headers=RT)
    assert renamed.status_code == 200  # its own name
    other = create(http)
    assert_error(http.put(f"/v1/agents/{other}", json={"name": name}, headers=RT), 409, "CONFLICT")
    assert_error(
        http.put(f"/v1/agents/{other}", json={"template_config": {"nope": 1}}, headers=RT),
        400,
        "VALIDATION_ERROR",
    )
    names = {a["name"] for a in http.get("/v1/agents", params={"limit": 1000}, headers=RT).json()}
    assert name + "-b" not in names
    assert http.get(f"/v1/agents/{agent_id}", headers=RT).status_code == 200


MISSING: list[tuple[str, str, Any]] = [
    ("GET", "/v1/agents/{id}", None),
    ("GET", "/v1/agents/{id}?version=1", None),
    ("GET", "/v1/agents/{id}/history", None),
    ("PUT", "/v1/agents/{id}", {"name": "x"}),
    ("PATCH", "/v1/agents/{id}/status", {"status": "active"}),
    ("DELETE", "/v1/agents/{id}", None),
    ("POST", "/v1/chat/completions", chat("{id}")),
    ("POST", "/v1/chat/completions", chat("{id}", stream=True)),
]


def test_a_missing_agent_is_a_404_everywhere(http: httpx.Client) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    for method, path, body in MISSING:
        for slash in ("", "/"):
            url = path.format(id=missing)
            url = url.replace("?", slash + "?") if "?" in url else url + slash
            payload = json.loads(json.dumps(body).replace("{id}", missing)) if body else None
            reply = http.request(method, url, json=payload, headers=RT)
            assert_error(reply, 404, "AGENT_NOT_FOUND")


def test_compose_drafts_an_agent_and_creates_nothing(http: httpx.Client) -> None:
    before = len(http.get("/v1/agents", params={"limit": 1000}, headers=RT).json())
    reply = http.post(
        "/v1/agents/compose/",
        json={
            "template_id": "simple-test",
            "instructions": "Answer questions about the weather politely.",
            "suggested_name": "Weather bot",
        },
        headers=RT,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["success"] is True
    assert body["draft"]["template_id"] == "simple-test"
    assert body["draft"]["name"]
    assert body["validation_results"]["valid"] is True
    assert body["usage"]["total_tokens"] > 0
    after = len(http.get("/v1/agents", params={"limit": 1000}, headers=RT).json())
    assert after == before
    unknown = http.post(
        "/v1/agents/compose", json={"template_id": "no-such", "instructions": "x"}, headers=RT
    )
    assert_error(unknown, 404, "TEMPLATE_NOT_FOUND")
    missing = http.post("/v1/agents/compose", json={"template_id": "simple-test"}, headers=RT)
    assert_error(missing, 422, "VALIDATION_ERROR")


def test_chat_completions_answer_as_json_and_as_an_event_stream(http: httpx.Client) -> None:
    agent_id = create(http, template_config={"response_prefix": "Bot: "})
    request = chat(
        agent_id, "tell me a story", metadata={"task_id": "task-e2e-1", "context_id": "c1"}
    )
    plain = http.post("/v1/chat/completions", json=request, headers=RT)
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "metadata"}
    assert body["object"] == "chat.completion"
    assert body["model"] == agent_id
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text.startswith("Bot: ")
    assert "tell me a story" in text
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (body["metadata"]["task_id"], body["metadata"]["context_id"]) == ("task-e2e-1", "c1")

    streamed = http.post("/v1/chat/completions/", json={**request, "stream": True}, headers=RT)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    payloads = frames(streamed.text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["metadata"]["task_id"] for c in chunks} == {"task-e2e-1"}
    assert {c["metadata"]["context_id"] for c in chunks} == {"c1"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    no_task = http.post("/v1/chat/completions", json=chat(agent_id), headers=RT).json()
    assert len(no_task["metadata"]["task_id"]) >= 16  # made when not given


def test_a_stream_is_relayed_as_the_model_writes_it(http: httpx.Client) -> None:
    agent_id = create(http, llm_config_id="slow")  # 50 ms a token
    words = " ".join(f"w{n}" for n in range(20))
    arrivals: list[tuple[float, str]] = []
    with http.stream(
        "POST", "/v1/chat/completions", json=chat(agent_id, words, stream=True), headers=RT
    ) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line.removeprefix("data: ")))
    assert arrivals[-1][1] == "[DONE]"
    first_text = next(t for t, data in arrivals if '"content":"' in data and '"role"' not in data)
    # ~20 tokens at 50 ms: the first arrives long before the last, not in one buffered burst.
    assert arrivals[-1][0] - first_text > 0.5


def test_request_sampling_parameters_reach_the_model(http: httpx.Client) -> None:
    agent_id = create(http)
    cut = http.post(
        "/v1/chat/completions",
        json=chat(agent_id, "one two three four five six seven", max_tokens=2),
        headers=RT,
    ).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] <= 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"temperature": 5}, "body.temperature"),
        ({"messages": []}, "body.messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "body.messages.0"),
        ({"top_p": 2}, "body.top_p"),
    ],
)
def test_bad_chat_input_is_a_400_naming_the_field(
    http: httpx.Client, change: dict[str, Any], field: str
) -> None:
    body = assert_error(
        http.post("/v1/chat/completions", json={**chat("anyone"), **change}, headers=RT),
        400,
        "VALIDATION_ERROR",
    )
    assert any(f["field"].startswith(field) for f in body["details"]["fields"]), body


# --- the official openai package ------------------------------------------------------------


@pytest.fixture
def sdk(gateways: Gateways) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{gateways.main.url}/v1", api_key=TOKEN, max_retries=0) as client:
        yield client


@pytest.fixture
def sdk_agent(http: httpx.Client) -> str:
    return create(http, template_config={"response_prefix": "SDK: "})


def test_the_openai_client_gets_a_completion(sdk: OpenAI, sdk_agent: str) -> None:
    completion = sdk.chat.completions.create(
        model=sdk_agent,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "what is the weather like"},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.model == sdk_agent
    assert completion.id.startswith("chatcmpl-")
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content is not None
    assert choice.message.content.startswith("SDK: ")
    assert "what is the weather like" in choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_the_openai_client_streams_the_same_text(sdk: OpenAI, sdk_agent: str) -> None:
    messages: Any = [{"role": "user", "content": "stream this sentence back please"}]
    whole = sdk.chat.completions.create(model=sdk_agent, messages=messages)
    chunks = list(sdk.chat.completions.create(model=sdk_agent, messages=messages, stream=True))
    assert chunks
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_the_openai_client_gets_usage_in_the_last_chunk(sdk: OpenAI, sdk_agent: str) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model=sdk_agent,
            messages=[{"role": "user", "content": "count my tokens"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def response_metadata(completion: Any) -> Any:
    """The `metadata` of a completion: a field of its own in newer clients, else an extra."""
    found = getattr(completion, "metadata", None)
    if found is None:
        assert completion.model_extra is not None
        found = completion.model_extra["metadata"]
    return found


def test_the_openai_client_round_trips_the_task_id(sdk: OpenAI, sdk_agent: str) -> None:
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    completion = sdk.chat.completions.create(
        model=sdk_agent,
        messages=[{"role": "user", "content": "remember me"}],
        extra_body={"metadata": {"task_id": task_id, "context_id": "ctx-sdk"}},
    )
    metadata = response_metadata(completion)
    assert (metadata["task_id"], metadata["context_id"]) == (task_id, "ctx-sdk")
    # Newer clients take `metadata` as a parameter of their own.
    again = sdk.chat.completions.create(
        model=sdk_agent,
        messages=[{"role": "user", "content": "and again"}],
        metadata={"task_id": task_id},
    )
    assert response_metadata(again)["task_id"] == task_id
    stream = sdk.chat.completions.create(
        model=sdk_agent,
        messages=[{"role": "user", "content": "again"}],
        stream=True,
        extra_body={"metadata": {"task_id": task_id}},
    )
    for chunk in stream:
        assert chunk.model_extra is not None
        assert chunk.model_extra["metadata"]["task_id"] == task_id


async def test_the_async_openai_client_streams(gateways: Gateways, http: httpx.Client) -> None:
    agent_id = create(http)
    async with AsyncOpenAI(
        base_url=f"{gateways.main.url}/v1", api_key=KEYS["operator"], max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model=agent_id, messages=[{"role": "user", "content": "async hello"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert "async hello" in text


def test_the_openai_client_raises_its_error_classes(
    sdk: OpenAI, sdk_agent: str, gateways: Gateways
) -> None:
    user: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=sdk_agent, messages=user, temperature=5)
    assert bad.value.status_code == 400
    assert code_of(bad.value.response.json()) == "VALIDATION_ERROR"
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=sdk_agent, messages=[])
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as missing:
            sdk.chat.completions.create(model="no-such-agent", messages=user, stream=stream)
        assert code_of(missing.value.response.json()) == "AGENT_NOT_FOUND"
    url = f"{gateways.main.url}/v1"
    with OpenAI(base_url=url, api_key="wrong-key", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError) as denied:
            stranger.chat.completions.create(model=sdk_agent, messages=user)
        assert code_of(denied.value.response.json()) == "INVALID_TOKEN"
    with (
        OpenAI(base_url=url, api_key=KEYS["viewer"], max_retries=0) as viewer,
        pytest.raises(openai.PermissionDeniedError),
    ):
        viewer.chat.completions.create(model=sdk_agent, messages=user)


def test_the_openai_client_raises_rate_limit_error(gateways: Gateways, http: httpx.Client) -> None:
    agent_id = create(http)
    user: Any = [{"role": "user", "content": "hi"}]
    url = f"{gateways.limited.url}/v1"
    with OpenAI(base_url=url, api_key=LIMITED_KEYS["sdk"], max_retries=0) as client:
        for _ in range(LIMITED_BURST):
            client.chat.completions.create(model=agent_id, messages=user)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model=agent_id, messages=user)
    assert limited.value.status_code == 429
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert code_of(limited.value.response.json()) == "RATE_LIMIT_EXCEEDED"


# --- OpenAI's newer surface: models, unknown keys, tools, formats, progress -----------------


def test_the_openai_client_lists_the_runnable_agents_as_models(
    sdk: OpenAI, http: httpx.Client, gateways: Gateways
) -> None:
    acme_agent = create(http, headers=token("acme"))
    globex_agent = create(http, headers=token("globex"))
    unowned = create(http)
    active, resting = create(http), create(http)
    for agent_id, statuses in ((active, ["active"]), (resting, ["active", "inactive"])):
        for status in statuses:
            moved = http.patch(f"/v1/agents/{agent_id}/status", json={"status": status}, headers=RT)
            assert moved.status_code == 200, moved.text

    models = {m.id: m for m in sdk.models.list()}
    assert {acme_agent, globex_agent, unowned, active} <= set(models)
    assert resting not in models  # not runnable
    assert {m.object for m in models.values()} == {"model"}
    assert models[acme_agent].owned_by == "acme"
    assert models[acme_agent].created > 0
    retrieved = sdk.models.retrieve(acme_agent)
    assert (retrieved.id, retrieved.object, retrieved.owned_by) == (acme_agent, "model", "acme")
    # A listed model is what chat completions take as `model`.
    ran = sdk.chat.completions.create(
        model=active, messages=[{"role": "user", "content": "are you there"}]
    )
    assert "are you there" in (ran.choices[0].message.content or "")
    for hidden in (resting, "no-such-agent"):
        with pytest.raises(openai.NotFoundError) as missing:
            sdk.models.retrieve(hidden)
        assert missing.value.code == "model_not_found"

    url = f"{gateways.main.url}/v1"
    with OpenAI(base_url=url, api_key=KEYS["acme"], max_retries=0) as acme:
        mine = {m.id for m in acme.models.list()}
        assert acme_agent in mine
        assert mine.isdisjoint({globex_agent, unowned, active})
        assert acme.models.retrieve(acme_agent).id == acme_agent
        with pytest.raises(openai.NotFoundError) as theirs:
            acme.models.retrieve(globex_agent)  # as absent as a missing one
        assert theirs.value.code == "model_not_found"
    with OpenAI(base_url=url, api_key=KEYS["globex"], max_retries=0) as globex:
        assert globex_agent in {m.id for m in globex.models.list()}
        assert acme_agent not in {m.id for m in globex.models.list()}


def test_an_unknown_chat_key_is_a_bad_request_naming_it(sdk: OpenAI, sdk_agent: str) -> None:
    user: Any = [{"role": "user", "content": "hi"}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(
                model=sdk_agent, messages=user, stream=stream, extra_body={"colour": "red"}
            )
        error = refused.value
        assert error.status_code == 400
        assert (error.code, error.param, error.type) == (
            "unknown_parameter",
            "colour",
            "invalid_request_error",
        )
        assert "colour" in error.message
        body = error.response.json()
        assert set(body) == ERROR_KEYS
        assert body["details"]["reason"] == "UNKNOWN_FIELD"
        assert "body.colour" in {f["field"] for f in body["details"]["fields"]}
    # A bad value is another code, and names the parameter the OpenAI way.
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=sdk_agent, messages=user, temperature=5)
    assert (bad.value.code, bad.value.param) == ("invalid_value", "temperature")


def test_the_openai_error_classes_carry_openai_codes(
    sdk: OpenAI, sdk_agent: str, gateways: Gateways
) -> None:
    user: Any = [{"role": "user", "content": "hi"}]
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as missing:
            sdk.chat.completions.create(model="no-such-agent", messages=user, stream=stream)
        assert missing.value.code == "model_not_found"
        assert missing.value.type == "invalid_request_error"
    with (
        OpenAI(base_url=f"{gateways.main.url}/v1", api_key="wrong-key", max_retries=0) as stranger,
    ):
        with pytest.raises(openai.AuthenticationError) as denied:
            stranger.chat.completions.create(model=sdk_agent, messages=user)
        assert denied.value.code == "invalid_api_key"
        assert denied.value.type == "authentication_error"
        with pytest.raises(openai.AuthenticationError) as listing:
            stranger.models.list()
        assert listing.value.code == "invalid_api_key"


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
OTHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}


def tool_result_turn(
    sdk: OpenAI, agent_id: str, task_id: str, user: Any, call_id: str, arguments: str
) -> str:
    """The text the agent answers once the client ran `get_weather` and sent its result."""
    follow_up = sdk.chat.completions.create(
        model=agent_id,
        messages=[
            *user,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "22 C and sunny"},
        ],
        tools=[WEATHER_TOOL, OTHER_TOOL],
        metadata={"task_id": task_id},
    )
    (choice,) = follow_up.choices
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert response_metadata(follow_up)["task_id"] == task_id
    return choice.message.content or ""


def test_the_openai_client_runs_a_client_tool_round_trip(sdk: OpenAI, sdk_agent: str) -> None:
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    user: Any = [{"role": "user", "content": "Paris"}]
    completion = sdk.chat.completions.create(
        model=sdk_agent,
        messages=user,
        tools=[WEATHER_TOOL, OTHER_TOOL],
        tool_choice="required",
        metadata={"task_id": task_id},
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert not choice.message.content
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"  # the first tool
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    answer = tool_result_turn(sdk, sdk_agent, task_id, user, call.id, call.function.arguments)
    assert "get_weather returned: 22 C and sunny" in answer

    # A named tool_choice calls that tool.
    named = sdk.chat.completions.create(
        model=sdk_agent,
        messages=[{"role": "user", "content": "UTC"}],
        tools=[WEATHER_TOOL, OTHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (timed,) = named.choices[0].message.tool_calls or []
    assert timed.function.name == "get_time"
    assert json.loads(timed.function.arguments) == {"zone": "UTC"}


def test_the_openai_client_streams_a_client_tool_call(sdk: OpenAI, sdk_agent: str) -> None:
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    user: Any = [{"role": "user", "content": "Lisbon"}]
    stream = sdk.chat.completions.create(
        model=sdk_agent,
        messages=user,
        tools=[WEATHER_TOOL, OTHER_TOOL],
        tool_choice="required",
        metadata={"task_id": task_id},
        stream=True,
    )
    # OpenAI's accumulation: calls by `index`; the id, type and name come once, the
    # arguments are the concatenation of every fragment.
    calls: dict[int, dict[str, str]] = {}
    finish_reasons = []
    text = ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for fragment in delta.tool_calls or []:
            call = calls.setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
            if fragment.id:
                call["id"] = fragment.id
            if fragment.type:
                assert fragment.type == "function"
            if fragment.function and fragment.function.name:
                call["name"] = fragment.function.name
            if fragment.function and fragment.function.arguments:
                call["arguments"] += fragment.function.arguments
        if chunk.choices[0].finish_reason:
            finish_reasons.append(chunk.choices[0].finish_reason)
    assert finish_reasons == ["tool_calls"]
    assert text == ""
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"]
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Lisbon"}
    answer = tool_result_turn(sdk, sdk_agent, task_id, user, call["id"], call["arguments"])
    assert "get_weather returned: 22 C and sunny" in answer

    # The package's own stream helper assembles the same call.
    with sdk.chat.completions.stream(
        model=sdk_agent, messages=user, tools=[WEATHER_TOOL], tool_choice="required"
    ) as helper:
        final = helper.get_final_completion()
    (assembled,) = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert assembled.function.name == "get_weather"
    assert json.loads(assembled.function.arguments) == {"city": "Lisbon"}


def test_the_openai_client_gets_an_answer_in_its_json_schema(
    sdk: OpenAI, http: httpx.Client
) -> None:
    agent_id = create(http)  # no response_prefix: that is put before every reply
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "score": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "urgent": {"type": "boolean"},
        },
        "required": ["summary", "score", "tags", "urgent"],
        "additionalProperties": False,
    }
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "triage", "schema": schema, "strict": True},
    }
    user: Any = [{"role": "user", "content": "my printer is on fire"}]
    completion = sdk.chat.completions.create(
        model=agent_id, messages=user, response_format=response_format
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    answer = json.loads(choice.message.content or "")
    assert set(answer) == {"summary", "score", "tags", "urgent"}
    assert isinstance(answer["summary"], str)
    assert "my printer is on fire" in answer["summary"]
    assert isinstance(answer["score"], int)
    assert not isinstance(answer["score"], bool)
    assert isinstance(answer["tags"], list)
    assert all(isinstance(t, str) for t in answer["tags"])
    assert isinstance(answer["urgent"], bool)
    # Streamed, the chunks add up to the same document.
    streamed = sdk.chat.completions.create(
        model=agent_id, messages=user, response_format=response_format, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert json.loads(text) == answer
    # json_object: some JSON object.
    loose = sdk.chat.completions.create(
        model=agent_id, messages=user, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)


def agentrt_event(chunk: Any) -> Any:
    """The `agentrt` progress event of a choiceless chunk, or None."""
    event = getattr(chunk, "agentrt", None)
    if event is None and chunk.model_extra:
        event = chunk.model_extra.get("agentrt")
    return event


def test_the_openai_client_streams_through_opt_in_progress_events(
    sdk: OpenAI, http: httpx.Client
) -> None:
    agent_id = create(http, toolsets=["parse_url"])
    url = "https://example.com/a?b=1"
    ask: Any = [{"role": "user", "content": f'/parse_url {{"url": "{url}"}}'}]

    def run(**options: Any) -> tuple[str, list[Any], list[Any]]:
        """The text, the finish reasons and the progress events of one streamed request."""
        chunks = list(
            sdk.chat.completions.create(model=agent_id, messages=ask, stream=True, **options)
        )
        assert {c.object for c in chunks} == {"chat.completion.chunk"}
        with_choices = [c for c in chunks if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
        reasons = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
        events = [agentrt_event(c) for c in chunks if not c.choices]
        return text, reasons, events

    plain_text, plain_reasons, plain_events = run()
    assert plain_events == []  # opt-in only
    assert "parse_url returned:" in plain_text
    assert plain_reasons == ["stop"]
    for options in (
        {"extra_headers": {"X-Agentrt-Progress": "true"}},
        {"extra_body": {"progress_events": True}},
    ):
        text, reasons, events = run(**options)
        assert text == plain_text, options
        assert reasons == plain_reasons, options
        assert None not in events, options
        kinds = [e["type"] for e in events]
        assert set(kinds) <= {"tool_call_started", "tool_call_finished", "step_progress"}
        started = next(e for e in events if e["type"] == "tool_call_started")
        finished = next(e for e in events if e["type"] == "tool_call_finished")
        assert kinds.index("tool_call_started") < kinds.index("tool_call_finished")
        assert started["tool_name"] == finished["tool_name"] == "parse_url"
        assert started["tool_call_id"] == finished["tool_call_id"]
        assert json.loads(started["arguments_json"]) == {"url": url}
        assert finished["ok"] is True


# --- a client making the old SDK's calls ----------------------------------------------------


class OldSdkError(Exception):
    """What the old SDK raised: the status and the server's `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class OldSdkClient:
    """The HTTP calls the old runtime's Python SDK makes, and its strict reading of agents.

    It authenticates with `X-Runtime-Token`, calls collections with a trailing slash, sends
    every create key (nulls for the unset ones), reads errors from `detail`, and rejects an
    agent body with any key it does not know.
    """

    CREATE_KEYS = (
        "id",
        "name",
        "description",
        "avatar_url",
        "type",
        "template_id",
        "template_version_id",
        "template_config",
        "system_prompt",
        "conversation_config",
        "toolsets",
        "llm_config_id",
        "agent_line_id",
        "version_type",
        "version_number",
        "owner_id",
        "status",
    )

    def __init__(self, base_url: str, runtime_token: str) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/v1/",
            headers={"X-Runtime-Token": runtime_token},
            follow_redirects=False,
            timeout=20,
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        reply = self._http.request(method, path, json=body)
        if reply.status_code >= 300:
            raise OldSdkError(reply.status_code, reply.json()["detail"])
        return reply.json()

    @staticmethod
    def _agent(body: Any) -> dict[str, Any]:
        unknown = set(body) - AGENT_KEYS
        if unknown or set(body) != AGENT_KEYS:
            raise ValueError(f"agent: unexpected or missing keys {set(body) ^ AGENT_KEYS}")
        if set(body["configuration"]) != CONFIGURATION_KEYS:
            raise ValueError(f"configuration: keys {set(body['configuration'])}")
        return dict(body)

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "health/"))

    def list_templates(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "templates/")["templates"])

    def create_agent(self, **fields: Any) -> dict[str, Any]:
        unknown = set(fields) - set(self.CREATE_KEYS)
        assert not unknown, unknown
        body = {key: fields.get(key) for key in self.CREATE_KEYS}
        return dict(self._call("POST", "agents/", body))

    def list_agents(self, **query: Any) -> list[dict[str, Any]]:
        reply = self._http.get("agents/", params=query)
        reply.raise_for_status()
        return [self._agent(a) for a in reply.json()]

    def get_agent(self, agent_id: str) -> dict[str, Any]:
        return self._agent(self._call("GET", f"agents/{agent_id}"))

    def update_agent(self, agent_id: str, **changes: Any) -> dict[str, Any]:
        return self._agent(self._call("PUT", f"agents/{agent_id}", changes))

    def set_status(self, agent_id: str, status: str) -> dict[str, Any]:
        return self._agent(self._call("PATCH", f"agents/{agent_id}/status", {"status": status}))

    def delete_agent(self, agent_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"agents/{agent_id}"))

    def chat(self, agent_id: str, messages: list[dict[str, str]]) -> str:
        body = self._call("POST", "chat/completions", {"model": agent_id, "messages": messages})
        return str(body["choices"][0]["message"]["content"])


@pytest.fixture
def old_sdk(gateways: Gateways) -> Iterator[OldSdkClient]:
    client = OldSdkClient(gateways.main.url, TOKEN)
    try:
        yield client
    finally:
        client.close()


def test_the_old_sdks_calls_work_and_every_agent_body_passes_its_strict_check(
    old_sdk: OldSdkClient,
) -> None:
    assert old_sdk.health()["status"] == "healthy"
    assert {"simple-test", "langgraph-workflow"} <= {t["id"] for t in old_sdk.list_templates()}
    name = f"old-sdk-{uuid.uuid4().hex[:8]}"
    created = old_sdk.create_agent(
        name=name,
        description="made the old way",
        template_id="simple-test",
        template_config={"response_prefix": "Old: "},
        system_prompt="Be helpful.",
        conversation_config={"temperature": 0.2, "max_tokens": 50},
        toolsets=[],
    )
    assert created["success"] is True
    agent_id = created["agent_id"]
    agent = old_sdk.get_agent(agent_id)
    assert agent["name"] == name
    assert agent["configuration"]["system_prompt"] == "Be helpful."
    assert agent["configuration"]["conversation_config"] == {"temperature": 0.2, "max_tokens": 50}
    assert agent_id in {a["id"] for a in old_sdk.list_agents(limit=1000)}
    updated = old_sdk.update_agent(
        agent_id, configuration={"system_prompt": "Be very helpful."}, metadata={"v": 2}
    )
    assert updated["configuration"]["system_prompt"] == "Be very helpful."
    assert old_sdk.set_status(agent_id, "active")["status"] == "active"
    assert [a["id"] for a in old_sdk.list_agents(active_only=True, limit=1000)].count(agent_id) == 1

    # Old clients resend the whole history each turn.
    history = [{"role": "user", "content": "first question"}]
    reply = old_sdk.chat(agent_id, history)
    assert reply.startswith("Old: ")
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "second"}]
    assert "second" in old_sdk.chat(agent_id, history)

    # A client-chosen id is kept; taking it again is a conflict the SDK reads from `detail`.
    chosen = f"chosen-{uuid.uuid4().hex[:8]}"
    assert old_sdk.create_agent(id=chosen, name=chosen, template_id="simple-test")["agent_id"] == (
        chosen
    )
    with pytest.raises(OldSdkError) as conflict:
        old_sdk.create_agent(id=chosen, name=chosen + "-again", template_id="simple-test")
    assert conflict.value.status == 409
    assert chosen in conflict.value.detail

    assert old_sdk.delete_agent(agent_id)["success"] is True
    with pytest.raises(OldSdkError) as gone:
        old_sdk.get_agent(agent_id)
    assert gone.value.status == 404
    assert gone.value.detail


def test_the_old_sdks_default_create_body_creates_a_created_agent_with_a_warning(
    http: httpx.Client,
) -> None:
    name = f"defaults-{uuid.uuid4().hex[:8]}"
    # What the old SDK sends when only a name and a template are given: every key, and
    # its defaults (nulls, and `status: "draft"`, which is not an agent status).
    body: dict[str, Any] = dict.fromkeys(OldSdkClient.CREATE_KEYS)
    body.update(name=name, template_id="simple-test", status="draft")
    assert len(body) == 17
    created = http.post("/v1/agents/", json=body, headers=RT)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["success"] is True
    warnings = answer["validation_results"]["warnings"]
    assert any("draft" in w for w in warnings), warnings
    agent_id = answer["agent_id"]
    agent = http.get(f"/v1/agents/{agent_id}", headers=RT).json()
    assert_agent_body(agent)
    assert (agent["name"], agent["status"]) == (name, "created")
    assert agent["template_id"] == "simple-test"
    # And it runs.
    ran = http.post("/v1/chat/completions", json=chat(agent_id, "default me"), headers=RT)
    assert ran.status_code == 200, ran.text
    assert "default me" in ran.json()["choices"][0]["message"]["content"]
    # An agent status given by a create is taken, without a warning.
    active = http.post(
        "/v1/agents",
        json={**body, "name": name + "-active", "status": "active"},
        headers=RT,
    )
    assert active.status_code == 201, active.text
    assert not any("status" in w for w in active.json()["validation_results"]["warnings"])
    assert http.get(f"/v1/agents/{active.json()['agent_id']}", headers=RT).json()["status"] == (
        "active"
    )


def test_create_refuses_unknown_keys_naming_each_and_updates_ignore_them(
    http: httpx.Client,
) -> None:
    name = f"typo-{uuid.uuid4().hex[:8]}"
    refused = http.post(
        "/v1/agents",
        json={"name": name, "template_id": "simple-test", "tools": ["parse_url"], "colour": "red"},
        headers=RT,
    )
    body = assert_error(refused, 422, "VALIDATION_ERROR")
    assert body["details"]["reason"] == "UNKNOWN_FIELD"
    fields = {f["field"] for f in body["details"]["fields"]}
    assert {"body.tools", "body.colour"} <= fields
    names = {a["name"] for a in http.get("/v1/agents", params={"limit": 1000}, headers=RT).json()}
    assert name not in names  # nothing was created
    agent_id = create(http, name=name)
    put = http.put(
        f"/v1/agents/{agent_id}", json={"description": "new", "colour": "red"}, headers=RT
    )
    assert put.status_code == 200, put.text
    assert "colour" not in put.json()
    patched = http.patch(
        f"/v1/agents/{agent_id}/status", json={"status": "active", "colour": "red"}, headers=RT
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "active"


# --- owners and rate limits -----------------------------------------------------------------


def test_an_owner_bound_key_sees_and_touches_only_its_own_agents(http: httpx.Client) -> None:
    acme, globex = token("acme"), token("globex")
    mine = create(http, headers=acme, system_prompt="acme only")
    theirs = create(http, headers=globex)
    unowned = create(http)
    assert http.get(f"/v1/agents/{mine}", headers=acme).status_code == 200

    def listed(headers: dict[str, str]) -> set[str]:
        reply = http.get("/v1/agents", params={"limit": 1000}, headers=headers)
        return {a["id"] for a in reply.json()}

    assert mine in listed(acme)
    assert listed(acme).isdisjoint({theirs, unowned})
    assert theirs in listed(globex)
    assert listed(globex).isdisjoint({mine, unowned})
    assert {mine, theirs, unowned} <= listed(RT)

    for target in (mine, unowned):  # another owner's agent is as absent as a missing one
        for method, path, body in MISSING:
            url = path.format(id=target)
            payload = json.loads(json.dumps(body).replace("{id}", target)) if body else None
            assert_error(
                http.request(method, url, json=payload, headers=globex), 404, "AGENT_NOT_FOUND"
            )
    after = http.get(f"/v1/agents/{mine}", headers=RT)
    assert after.headers["etag"] == '"1"'
    assert after.json()["configuration"]["system_prompt"] == "acme only"

    moved = http.post(
        "/v1/agents",
        json={
            "name": f"moved-{uuid.uuid4().hex[:8]}",
            "template_id": "simple-test",
            "owner_id": "globex",
        },
        headers=acme,
    )
    assert_error(moved, 403, "FORBIDDEN")
    assert http.post("/v1/chat/completions", json=chat(mine), headers=acme).status_code == 200
    assert http.delete(f"/v1/agents/{mine}", headers=acme).status_code == 200


def test_an_agent_moved_to_another_owner_is_hidden_from_the_old_owner_at_every_version(
    http: httpx.Client,
) -> None:
    acme, globex = token("acme"), token("globex")
    agent_id = create(http, headers=globex, system_prompt="globex secrets")
    moved = http.put(f"/v1/agents/{agent_id}", json={"owner_id": "acme"}, headers=RT)
    assert moved.status_code == 200, moved.text
    assert http.get(f"/v1/agents/{agent_id}", headers=acme).status_code == 200
    assert_error(http.get(f"/v1/agents/{agent_id}", headers=globex), 404, "AGENT_NOT_FOUND")
    assert_error(http.get(f"/v1/agents/{agent_id}/history", headers=globex), 404, "AGENT_NOT_FOUND")
    assert http.get(f"/v1/agents/{agent_id}/history", headers=acme).status_code == 200
    # The agent is acme's now: globex must not read any version of it ...
    assert_error(
        http.get(f"/v1/agents/{agent_id}", params={"version": 1}, headers=globex),
        404,
        "AGENT_NOT_FOUND",
    )
    # ... and acme reads every version, as its history already shows them.
    assert http.get(f"/v1/agents/{agent_id}", params={"version": 1}, headers=acme).status_code == (
        200
    )


def test_reusing_a_deleted_agents_id_does_not_reveal_the_other_owners_history(
    http: httpx.Client,
) -> None:
    acme, globex = token("acme"), token("globex")
    agent_id = f"support-{uuid.uuid4().hex[:8]}"
    create(http, headers=acme, id=agent_id, system_prompt="ACME SECRET PROMPT")
    assert http.delete(f"/v1/agents/{agent_id}", headers=acme).status_code == 200
    create(http, headers=globex, id=agent_id)
    history = http.get(f"/v1/agents/{agent_id}/history", headers=globex)
    assert history.status_code == 200
    events = history.json()["events"]
    assert "key:acme" not in {e["actor"] for e in events}
    assert "ACME SECRET PROMPT" not in history.text


def test_a_put_may_repeat_the_status_but_a_change_is_a_conflict(http: httpx.Client) -> None:
    agent_id = create(http)
    status = http.get(f"/v1/agents/{agent_id}", headers=RT).json()["status"]
    same = http.put(f"/v1/agents/{agent_id}", json={"status": status}, headers=RT)
    assert (same.status_code, same.json()["status"]) == (200, status)
    other = "inactive" if status != "inactive" else "active"
    reply = http.put(
        f"/v1/agents/{agent_id}", json={"status": other, "description": "x"}, headers=RT
    )
    body = assert_error(reply, 409, "CONFLICT")
    assert [f["field"] for f in body["details"]["fields"]] == ["body.status"]
    after = http.get(f"/v1/agents/{agent_id}", headers=RT).json()
    assert after["status"] == status  # nothing half-applied


def test_a_key_over_its_rate_gets_429_with_retry_after(gateways: Gateways, backend: Any) -> None:
    limited = token("limited")
    with httpx.Client(base_url=gateways.limited.url, timeout=20) as client:
        remaining = []
        for _ in range(LIMITED_BURST):
            reply = client.get("/v1/whoami", headers=limited)
            assert reply.status_code == 200
            assert reply.headers["x-ratelimit-limit"] == str(LIMITED_BURST)
            remaining.append(int(reply.headers["x-ratelimit-remaining"]))
        assert remaining == list(range(LIMITED_BURST - 1, -1, -1))
        over = client.get("/v1/whoami", headers=limited)
        body = assert_error(over, 429, "RATE_LIMIT_EXCEEDED")
        assert body["details"]["scope"] == "key"
        assert int(over.headers["retry-after"]) >= 1
        assert over.headers["x-ratelimit-limit"] == str(LIMITED_BURST)
        assert over.headers["x-ratelimit-remaining"] == "0"
        # Buckets are per key: the runtime token is not held back by this key's use.
        assert client.get("/v1/whoami", headers=RT).status_code == 200
        # A refused mutation is audited as denied.
        refused = client.post(
            "/v1/agents",
            json={"name": "never", "template_id": "simple-test"},
            headers={**limited, "X-Request-ID": "rate-limited-create"},
        )
        assert_error(refused, 429, "RATE_LIMIT_EXCEEDED")
    records = asyncio.run(audit_records(backend, {"rate-limited-create"}))
    (record,) = [r for r in records if r.request_id == "rate-limited-create"]
    assert (record.action, record.outcome, record.principal_id) == (
        "agent.create",
        "denied",
        "key:limited",
    )


# --- the audit trail and the log ------------------------------------------------------------


async def audit_records(backend: Any, request_ids: set[str], timeout: float = 10) -> list[Any]:
    """The gateway's audit records once those of `request_ids` are in (settled a moment)."""
    stream = Names(backend.prefix).stream("audit")
    deadline = time.monotonic() + timeout
    while True:
        messages = await wait_for_records(backend.nats_url, stream, 0, timeout=0)
        records = [r for r in records_of(messages) if r.service == "gateway"]
        if request_ids <= {r.request_id for r in records} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a duplicate would be published right behind
    messages = await wait_for_records(backend.nats_url, stream, 0, timeout=0)
    return [r for r in records_of(messages) if r.service == "gateway"]


PRINCIPAL = re.compile(r"^(key:[a-z_]+|runtime-token|anonymous)$")


async def test_each_mutating_request_and_execution_is_audited_once(
    gateways: Gateways, backend: Any
) -> None:
    async with httpx.AsyncClient(base_url=gateways.main.url, timeout=20) as client:
        target = (
            await client.post(
                "/v1/agents",
                json={"name": f"aud-{uuid.uuid4().hex[:8]}", "template_id": "simple-test"},
                headers=RT,
            )
        ).json()["agent_id"]
        run = uuid.uuid4().hex[:8]
        calls: list[tuple[str, str, str, Any, tuple[str, str, str]]] = [
            (
                "POST",
                "/v1/agents",
                "admin",
                {"name": f"aud-new-{run}", "template_id": "simple-test"},
                ("agent.create", "succeeded", "key:admin"),
            ),
            (
                "PUT",
                f"/v1/agents/{target}/",
                "runtime",
                {"description": "x"},
                ("agent.update", "succeeded", "runtime-token"),
            ),
            (
                "PUT",
                f"/v1/agents/{target}",
                "viewer",
                {"description": "y"},
                ("agent.update", "denied", "key:viewer"),
            ),
            (
                "PATCH",
                f"/v1/agents/{target}/status",
                "",
                {"status": "active"},
                ("agent.status", "denied", "anonymous"),
            ),
            (
                "PATCH",
                f"/v1/agents/{target}/status",
                "admin",
                {"status": "active"},
                ("agent.status", "succeeded", "key:admin"),
            ),
            (
                "POST",
                "/v1/chat/completions",
                "operator",
                chat(target),
                ("chat.completion", "succeeded", "key:operator"),
            ),
            (
                "POST",
                "/v1/chat/completions/",
                "operator",
                chat(target, stream=True),
                ("chat.completion", "succeeded", "key:operator"),
            ),
            (
                "POST",
                "/v1/chat/completions",
                "operator",
                chat("no-such-agent"),
                ("chat.completion", "failed", "key:operator"),
            ),
            (
                "POST",
                "/v1/agents/compose",
                "operator",
                {"template_id": "simple-test", "instructions": "hi"},
                ("agent.compose", "succeeded", "key:operator"),
            ),
            (
                "DELETE",
                "/v1/agents/no-such-agent",
                "admin",
                None,
                ("agent.delete", "failed", "key:admin"),
            ),
            (
                "DELETE",
                f"/v1/agents/{target}",
                "runtime",
                None,
                ("agent.delete", "succeeded", "runtime-token"),
            ),
        ]
        expected: dict[str, tuple[str, str, str]] = {}
        for index, (method, path, who, body, outcome) in enumerate(calls):
            request_id = f"audit-{run}-{index}"
            headers = {**(token(who) if who else {}), "X-Request-ID": request_id}
            reply = await client.request(method, path, json=body, headers=headers)
            assert reply.headers["x-request-id"] == request_id
            expected[request_id] = outcome
        reads = {f"audit-{run}-read-{n}" for n in range(2)}
        for n, path in enumerate(("/v1/agents", "/v1/health")):
            await client.get(path, headers={**RT, "X-Request-ID": f"audit-{run}-read-{n}"})

    records = await audit_records(backend, set(expected))
    mine = [r for r in records if r.request_id.startswith(f"audit-{run}-")]
    assert sorted(r.request_id for r in mine) == sorted(expected)  # one each, none for reads
    assert reads.isdisjoint(r.request_id for r in records)
    by_request = {r.request_id: r for r in mine}
    for request_id, outcome in expected.items():
        record = by_request[request_id]
        assert (record.action, record.outcome, record.principal_id) == outcome, request_id
    ran = by_request[f"audit-{run}-5"]
    assert (ran.agent_id, ran.target) == (target, target)
    assert ran.run_id
    assert ran.task_id
    streamed = by_request[f"audit-{run}-6"]
    assert streamed.run_id
    assert streamed.run_id != ran.run_id
    assert by_request[f"audit-{run}-0"].agent_id  # the new agent's id
    for record in records:  # every gateway record of the module so far
        assert PRINCIPAL.match(record.principal_id), record.principal_id
        text = str(record)
        assert not any(secret in text for secret in SECRETS)


async def test_a_client_that_goes_away_cancels_the_run_and_is_audited_once(
    gateways: Gateways, backend: Any, http: httpx.Client
) -> None:
    agent_id = create(http, llm_config_id="slow")
    request_id = f"gone-{uuid.uuid4().hex[:8]}"
    words = " ".join(f"w{n}" for n in range(60))  # ~3 s at 50 ms a token
    async with (
        httpx.AsyncClient(base_url=gateways.main.url, timeout=20) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json=chat(agent_id, words, stream=True),
            headers={**RT, "X-Request-ID": request_id},
        ) as reply,
    ):
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if '"content":"' in line and '"role"' not in line:
                run_id = json.loads(line.removeprefix("data: "))["metadata"]["run_id"]
                break  # and hang up
    records = [r for r in await audit_records(backend, {request_id}) if r.request_id == request_id]
    assert len(records) == 1
    (record,) = records
    assert (record.action, record.outcome, record.run_id) == ("chat.completion", "failed", run_id)
    assert record.detail == "the client went away before the answer ended"
    # The run was cancelled at the executor, not left to finish.
    async with grpc.aio.insecure_channel(backend.executor.address) as channel:
        executor = pb_grpc.ExecutorStub(channel)
        deadline = time.monotonic() + 10
        while True:
            run = (
                await executor.GetRun(
                    pb.GetRunRequest(run_id=run_id),
                    metadata=(("authorization", f"Bearer {backend.service_token}"),),
                    timeout=5,
                )
            ).run
            if run.status != "running" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert run.status == "cancelled"


def test_the_gateway_log_has_audit_lines_and_no_secret(
    http: httpx.Client, gateways: Gateways
) -> None:
    for name in ("runtime", "admin", "acme"):
        create(http, headers=token(name))
    http.get("/v1/agents", headers={"Authorization": f"Bearer {KEYS['viewer']}x"})
    for process in (gateways.main, gateways.limited):
        deadline = time.monotonic() + 5
        while '"msg": "audit"' not in process.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    log = gateways.main.log_path.read_text()
    audit_lines = [line for line in log.splitlines() if '"logger": "agentrt.audit"' in line]
    assert len(audit_lines) >= 3
    assert any('"principal_id": "key:acme"' in line for line in audit_lines)
    for process in (gateways.main, gateways.limited):
        text = process.log_path.read_text()
        for secret in [*SECRETS, KEYS["viewer"] + "x"]:
            assert secret not in text
            assert secret[-16:] not in text  # not even a part of one
        # Nothing the tests sent made the gateway fail or complain.
        for line in text.splitlines():
            assert json.loads(line)["level"] == "INFO", line


# --- shutdown -------------------------------------------------------------------------------


def test_sigterm_stops_an_idle_gateway_promptly_with_exit_code_0(backend: Any) -> None:
    # Configured the way old deployments are: the token in RUNTIME_TOKEN.
    gateway = backend.gateway(None, RUNTIME_TOKEN=TOKEN)
    backend.start(gateway)
    request_id = f"last-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=gateway.url) as client:  # an idle keep-alive connection stays
        assert client.get("/v1/whoami", headers=RT).json()["id"] == "runtime-token"
        created = client.post(
            "/v1/agents",
            json={"name": request_id, "template_id": "simple-test"},
            headers={**RT, "X-Request-ID": request_id},
        )
        assert created.status_code == 201
        began = time.monotonic()
        code = gateway.stop(timeout=10)
        elapsed = time.monotonic() - began
    assert code == 0, gateway.log()
    assert elapsed < 10
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gateway.url}/ping", timeout=1)
    # The audit record of the last request was published before the process ended.
    records = asyncio.run(audit_records(backend, {request_id}, timeout=2))
    assert [r.action for r in records if r.request_id == request_id] == ["agent.create"]


def test_runs_are_read_listed_joined_and_cancelled_with_owners_and_roles(
    http: httpx.Client,
) -> None:
    acme_agent = create(http, headers=token("acme"))
    globex_agent = create(http, headers=token("globex"))
    runs = {}
    for name, agent_id in (("acme", acme_agent), ("globex", globex_agent)):
        reply = http.post("/v1/chat/completions", json=chat(agent_id), headers=token(name))
        assert reply.status_code == 200, reply.text
        runs[name] = reply.json()["metadata"]["run_id"]
    run = http.get(f"/v1/runs/{runs['acme']}", headers=RT).json()
    assert (run["agent_id"], run["status"], run["attempts"]) == (acme_agent, "succeeded", 1)
    assert run["usage"]["total_tokens"] > 0
    listed = http.get(f"/v1/runs?agent_id={acme_agent}", headers=token("viewer")).json()
    assert [r["run_id"] for r in listed["runs"]] == [runs["acme"]]
    joined = http.get(f"/v1/runs/{runs['acme']}/wait?timeout=5", headers=token("viewer"))
    assert joined.json()["status"] == "succeeded"
    # Owners see their own runs only; another owner's run does not exist for them.
    mine = {
        r["run_id"] for r in http.get("/v1/runs?limit=1000", headers=token("acme")).json()["runs"]
    }
    assert runs["acme"] in mine
    assert runs["globex"] not in mine
    assert_error(
        http.get(f"/v1/runs/{runs['globex']}", headers=token("acme")), 404, "RUN_NOT_FOUND"
    )
    # Cancelling needs the operator role; a finished run says it was not running.
    assert_error(
        http.post(f"/v1/runs/{runs['acme']}/cancel", headers=token("viewer")), 403, "FORBIDDEN"
    )
    late = http.post(f"/v1/runs/{runs['acme']}/cancel", headers=token("operator"))
    assert (late.status_code, late.json()["cancelled"]) == (202, False)
