"""The gateway over real HTTP (uvicorn on a free port), with real gRPC health behind it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from agent_gateway.config import Settings
from agent_gateway.main import serve

from agentrt_kit.grpc.server import GrpcServer
from agentrt_kit.settings import ConfigError

TOKEN = "runtime-token-for-tests"
ERROR_KEYS = {"error", "message", "details", "detail"}


@dataclass
class Gateway:
    client: httpx.AsyncClient
    registry: GrpcServer
    executor: GrpcServer


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    registry, executor = GrpcServer([]), GrpcServer([])  # gRPC health only
    registry_port, executor_port = await registry.start(), await executor.start()
    settings = Settings(
        port=0,
        runtime_token=TOKEN,
        registry_target=f"127.0.0.1:{registry_port}",
        executor_target=f"127.0.0.1:{executor_port}",
        probe_timeout_seconds=0.5,
    )
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop=stop, on_ready=ready.set_result))
    try:
        done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ready.result()}") as client:
            yield Gateway(client, registry, executor)
    finally:
        stop.set()
        await task
        await registry.stop(0)
        await executor.stop(0)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"X-Runtime-Token": token}


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
    assert body["error"] == "INVALID_TOKEN"
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
        assert (reply.status_code, reply.json()) == (200, {"id": "runtime-token", "role": "admin"})


async def test_unknown_routes_and_methods_get_the_compat_error_body(gateway: Gateway) -> None:
    missing = await gateway.client.get("/nope", headers=auth())
    assert missing.status_code == 404
    assert missing.json()["error"] == "NOT_FOUND"
    assert set(missing.json()) == ERROR_KEYS
    wrong_method = await gateway.client.post("/ping", headers=auth())
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "METHOD_NOT_ALLOWED"
    assert "allow" in wrong_method.headers


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
