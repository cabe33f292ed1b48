"""The gateway over real HTTP (uvicorn on a free port), with real gRPC health behind it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from gateway_support import ERROR_KEYS, TOKEN, auth, code_of, running_gateway
from nats.js.kv import KeyValue

from agent_gateway.config import Settings
from agent_gateway.domain.templates import template_view
from agent_gateway.main import serve
from agentrt_kit.catalog import executor_key, open_bucket, publish_descriptor, publish_executor
from agentrt_kit.grpc.server import GrpcServer
from agentrt_kit.nats import Names, NatsClient
from agentrt_kit.settings import ConfigError


@dataclass
class Gateway:
    client: httpx.AsyncClient
    registry: GrpcServer
    executor: GrpcServer
    nats_url: str
    prefix: str

    @contextlib.asynccontextmanager
    async def catalogue(self) -> AsyncIterator[KeyValue]:
        """The template catalogue bucket, as executors write it."""
        client = NatsClient(self.nats_url, name="test-executor")
        await client.start()
        await client.wait_connected(5)
        try:
            yield await open_bucket(client.js, Names(self.prefix), Settings().catalog_limits())
        finally:
            await client.close()


@pytest.fixture
async def gateway(nats_server: Any, nats_prefix: str) -> AsyncIterator[Gateway]:
    registry, executor = GrpcServer([]), GrpcServer([])  # gRPC health only
    registry_port, executor_port = await registry.start(), await executor.start()
    try:
        async with running_gateway(
            nats_url=nats_server.url,
            nats_prefix=nats_prefix,
            registry_target=f"127.0.0.1:{registry_port}",
            executor_target=f"127.0.0.1:{executor_port}",
        ) as client:
            yield Gateway(client, registry, executor, nats_server.url, nats_prefix)
    finally:
        await registry.stop(0)
        await executor.stop(0)


async def test_root_and_ping_are_open_with_and_without_a_trailing_slash(gateway: Gateway) -> None:
    root = await gateway.client.get("/")
    assert root.status_code == 200
    assert root.json()["name"] == "Agent Runtime"
    for path in ("/ping", "/ping/"):
        reply = await gateway.client.get(path)
        assert (reply.status_code, reply.json()) == (200, {"status": "ok", "message": "pong"})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Runtime-Token": "wrong"},
        {"X-Runtime-Token": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ],
)
async def test_v1_routes_refuse_a_missing_or_wrong_token_with_the_compat_body(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    reply = await gateway.client.get("/v1/whoami", headers=headers)
    assert reply.status_code == 401
    body = reply.json()
    assert set(body) == ERROR_KEYS
    assert code_of(body) == "INVALID_TOKEN"
    assert body["detail"] == body["message"]
    assert body["details"] == {}
    assert reply.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers", [auth(), {"Authorization": f"Bearer {TOKEN}"}, {"authorization": f"bearer {TOKEN}"}]
)
async def test_the_runtime_token_is_accepted_as_header_or_bearer_key(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    for path in ("/v1/whoami", "/v1/whoami/"):
        reply = await gateway.client.get(path, headers=headers)
        assert (reply.status_code, reply.json()) == (
            200,
            {"id": "runtime-token", "role": "admin", "owner": None},
        )


async def test_unknown_routes_and_methods_get_the_compat_error_body(gateway: Gateway) -> None:
    missing = await gateway.client.get("/nope", headers=auth())
    assert missing.status_code == 404
    assert code_of(missing.json()) == "NOT_FOUND"
    assert set(missing.json()) == ERROR_KEYS
    wrong_method = await gateway.client.post("/ping", headers=auth())
    assert wrong_method.status_code == 405
    assert code_of(wrong_method.json()) == "METHOD_NOT_ALLOWED"
    assert "allow" in wrong_method.headers


async def test_a_wrong_method_is_told_every_method_the_path_is_served_with(
    gateway: Gateway,
) -> None:
    # Each method is a route of its own; the 405 must still name them all (RFC 9110).
    for method, path, allowed in [
        ("DELETE", "/v1/agents", "GET, POST"),
        ("PATCH", "/v1/agents/some-id", "DELETE, GET, PUT"),
        ("PATCH", "/v1/agents/some-id/", "DELETE, GET, PUT"),
        ("POST", "/ping", "GET"),
    ]:
        reply = await gateway.client.request(method, path, headers=auth())
        assert reply.status_code == 405, (method, path)
        assert reply.headers["allow"] == allowed, (method, path)
        assert code_of(reply.json()) == "METHOD_NOT_ALLOWED"


async def test_which_v1_routes_exist_is_only_told_to_callers_with_a_token(
    gateway: Gateway,
) -> None:
    assert (await gateway.client.get("/v1/nope")).status_code == 401
    assert (await gateway.client.post("/v1/whoami")).status_code == 401
    assert (await gateway.client.get("/v1/nope", headers=auth())).status_code == 404
    assert (await gateway.client.post("/v1/whoami", headers=auth())).status_code == 405


async def test_probes_report_liveness_and_the_readiness_of_each_dependency(
    gateway: Gateway,
) -> None:
    assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"registry": "ok", "executor": "ok"}}

    await gateway.executor.set_serving(False)
    not_ready = await gateway.client.get("/readyz/")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"] == {"registry": "ok", "executor": "down"}

    await gateway.executor.stop(0)  # gone altogether: still an answer, within the deadline
    gone = await gateway.client.get("/readyz")
    assert (gone.status_code, gone.json()["checks"]["executor"]) == (503, "down")


async def test_the_openapi_document_lists_each_route_once(gateway: Gateway) -> None:
    paths = set((await gateway.client.get("/openapi.json")).json()["paths"])
    assert {"/", "/ping", "/healthz", "/readyz", "/v1/whoami"} <= paths
    assert not any(p.endswith("/") and p != "/" for p in paths)


async def test_tokens_never_reach_the_log(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await gateway.client.get("/v1/whoami", headers=auth("guess-" + TOKEN))
    await gateway.client.get("/v1/whoami", headers=auth())
    assert TOKEN not in caplog.text


async def test_the_gateway_does_not_start_without_a_runtime_token() -> None:
    with pytest.raises(ConfigError, match="RUNTIME_TOKEN"):
        await serve(Settings(port=0))


def test_the_runtime_token_is_read_from_the_compatible_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNTIME_TOKEN", "from-old-deployment")
    settings: Any = Settings()
    assert settings.runtime_token.get_secret_value() == "from-old-deployment"
    assert "from-old-deployment" not in repr(settings)


def descriptor(template_id: str, version: str = "1.0.0", framework: str = "langgraph") -> Any:
    return {
        "id": template_id,
        "version": version,
        "name": f"{template_id} name",
        "description": "what it does",
        "framework": framework,
        "config_schema": {"type": "object"},
        "config_fields": [{"key": "system_prompt", "type": "string", "optional": True}],
        "extra": "not shown to clients",
    }


async def eventually(check: Any, timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.05)


async def test_templates_come_from_the_catalogue_with_exactly_the_compat_keys(
    gateway: Gateway,
) -> None:
    async with gateway.catalogue() as kv:
        await publish_descriptor(kv, descriptor("simple-test"))
        await publish_descriptor(kv, descriptor("other", framework="custom"))
        await publish_descriptor(kv, descriptor("simple-test", version="1.1.0"))

    async def listed() -> Any:
        reply = await gateway.client.get("/v1/templates/", headers=auth())
        body = reply.json()
        return body if len(body["templates"]) == 2 else None

    body = await eventually(listed)
    assert [t["id"] for t in body["templates"]] == ["other", "simple-test"]
    simple = body["templates"][1]
    assert simple == {
        "id": "simple-test",
        "framework": "langgraph",
        "name": "simple-test name",
        "description": "what it does",
        "version": "1.1.0",
        "config": [{"key": "system_prompt", "type": "string", "optional": True}],
    }
    only = await gateway.client.get("/v1/templates?framework=custom", headers=auth())
    assert [t["id"] for t in only.json()["templates"]] == ["other"]
    for path in ("/v1/templates/simple-test", "/v1/templates/simple-test/"):
        one = await gateway.client.get(path, headers=auth())
        assert (one.status_code, one.json()) == (200, simple)


async def test_an_unknown_template_is_a_404_with_the_compat_body(gateway: Gateway) -> None:
    async with gateway.catalogue() as kv:
        await publish_descriptor(kv, descriptor("known"))
    for template_id in ("missing", "bad%20id", "x" * 300):
        reply = await gateway.client.get(f"/v1/templates/{template_id}", headers=auth())
        assert reply.status_code == 404
        assert code_of(reply.json()) == "TEMPLATE_NOT_FOUND"
        assert set(reply.json()) == ERROR_KEYS
    assert (await gateway.client.get("/v1/templates/known")).status_code == 401


async def test_templates_follow_the_catalogue_as_executors_change_it(gateway: Gateway) -> None:
    async with gateway.catalogue() as kv:
        await publish_descriptor(kv, descriptor("first"))

        async def ids() -> Any:
            body = (await gateway.client.get("/v1/templates", headers=auth())).json()
            return [t["id"] for t in body["templates"]]

        assert await eventually(lambda: _equals(ids, ["first"]))
        await publish_descriptor(kv, descriptor("second"))
        assert await eventually(lambda: _equals(ids, ["first", "second"]))
        await kv.delete("first")  # an executor stopped serving it
        assert await eventually(lambda: _equals(ids, ["second"]))
        # A template written a moment ago is found even before the watch delivers it.
        await publish_descriptor(kv, descriptor("third"))
        reply = await gateway.client.get("/v1/templates/third", headers=auth())
        assert reply.status_code == 200


async def _equals(read: Any, expected: Any) -> bool:
    return bool(await read() == expected)


def executor(executor_id: str, sandbox: dict[str, Any] | None, expires_in: float = 180) -> Any:
    """An executor's catalogue entry with the sandbox its tools service reports."""
    now = time.time()
    return {
        "executor_id": executor_id,
        "providers": ["offline"],
        "limits": {},
        "sandbox": sandbox,
        "published_at": now,
        "expires_at": now + expires_in,
    }


BUBBLEWRAP = {
    "available": True,
    "isolation": "bubblewrap",
    "reason": "",
    "runtimes": [{"language": "python", "version": "3.11.2", "modules": ["json"]}],
}
NO_BWRAP = {"available": False, "isolation": "", "reason": "bwrap is not installed", "runtimes": []}


async def test_schema_offers_code_execution_while_a_live_executor_has_a_sandbox(
    gateway: Gateway,
) -> None:
    async def capabilities() -> dict[str, Any]:
        reply = await gateway.client.get("/v1/schema", headers=auth())
        assert reply.status_code == 200, reply.text
        found: dict[str, Any] = reply.json()["capabilities"]
        return found

    async def sandbox_health() -> dict[str, Any]:
        reply = await gateway.client.get("/v1/health", headers=auth())
        found: dict[str, Any] = reply.json()["sandbox"]
        return found

    # No executor has published (or only one that could not ask its tools service).
    none = {
        "streaming": True,
        "toolCalling": True,
        "multimodal": False,
        "codeExecution": False,
        "codeExecutionIsolation": "",
        "codeExecutionReason": "no executor reports a code sandbox",
    }
    assert await capabilities() == none
    assert await sandbox_health() == {
        "available": False,
        "isolation": "",
        "reason": "no executor reports a code sandbox",
    }
    async with gateway.catalogue() as kv:
        await publish_executor(kv, executor("unknown", None))
        await publish_executor(kv, executor("gone", BUBBLEWRAP, expires_in=-1))
        await publish_executor(kv, executor("without", NO_BWRAP))
        unavailable = {
            **none,
            "codeExecutionReason": "bwrap is not installed",
        }
        assert await eventually(lambda: _equals(capabilities, unavailable))
        assert await sandbox_health() == {
            "available": False,
            "isolation": "",
            "reason": "bwrap is not installed",
        }

        await publish_executor(kv, executor("with", BUBBLEWRAP))
        offered = {
            **{k: v for k, v in none.items() if k != "codeExecutionReason"},
            "codeExecution": True,
            "codeExecutionIsolation": "bubblewrap",
        }
        assert await eventually(lambda: _equals(capabilities, offered))
        assert await sandbox_health() == {"available": True, "isolation": "bubblewrap"}

        # That executor goes away: code can no longer run.
        await kv.delete(executor_key("with"))
        assert await eventually(lambda: _equals(capabilities, unavailable))


def test_a_descriptor_without_id_or_version_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks 'version'"):
        template_view({"id": "x"})
    assert template_view({"id": 7, "version": 2})["id"] == "7"


async def test_metrics_count_requests_by_route_template_and_status(gateway: Gateway) -> None:
    await gateway.client.get("/ping")
    await gateway.client.get("/ping/")
    await gateway.client.get("/v1/whoami")
    await gateway.client.get("/v1/templates/some-secret-looking-id", headers=auth("nope"))
    await gateway.client.get("/nowhere/abc123")
    reply = await gateway.client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert 'agentrt_gateway_requests_total{method="GET",route="/ping",status="200"} 1.0' in text
    assert 'route="/ping/",status="200"} 1.0' in text
    assert 'agentrt_gateway_requests_total{method="GET",route="/v1/whoami",status="401"}' in text
    assert 'route="/v1/templates/{template_id}",status="401"' in text
    assert 'route="unmatched",status="404"' in text
    assert "some-secret-looking-id" not in text
    assert "abc123" not in text
    assert "agentrt_gateway_request_seconds_bucket" in text


async def test_an_unexpected_error_is_a_500_with_the_request_id_and_no_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import hashlib
    from typing import cast

    from agent_gateway.adapters.access import Access, Gate
    from agent_gateway.adapters.http_api import Services, create_app
    from agent_gateway.domain.auth import Authenticator
    from agent_gateway.domain.limits import RateLimiter

    class Broken:
        async def runnable(self, caller: Any) -> Any:
            raise RuntimeError("secret internals")

    gate = Gate(
        Authenticator(hashlib.sha256(TOKEN.encode()).digest(), []),
        RateLimiter(0, 1),
        RateLimiter(0, 1),
    )
    unused = cast(Any, None)
    services = Services(unused, unused, cast(Any, Broken()), unused, unused, unused)
    app = create_app(Access(gate), services, version="test")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        reply = await client.get("/v1/models", headers={**auth(), "X-Request-ID": "req-500"})
    assert reply.status_code == 500
    assert reply.headers["x-request-id"] == "req-500"
    assert reply.headers["x-should-retry"] == "false"
    assert reply.json()["error"]["type"] == "server_error"
    assert "secret" not in reply.text
    logged = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert len(logged) == 1


async def test_a_path_ending_in_a_newline_is_no_route(gateway: Gateway) -> None:
    for path in ("/v1/agents/%0A", "/v1/templates/%0A", "/ping%0A"):
        reply = await gateway.client.get(path, headers=auth())
        assert reply.status_code == 404, (path, reply.text)
        assert code_of(reply.json()) == "NOT_FOUND"
